# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/demo (sourced, not run).

say() { printf '\n==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# Install Debian packages (apt-get update first). Arguments: package names.
apt_install() {
    [ "$#" -gt 0 ] || return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
    say "installing Debian packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# Put the pyenv interpreters 3.10-3.13 on PATH, so tox (and uv) find python3.10 ... python3.13
# as real executables instead of pyenv shims, which fail for every version but the global one.
# Ascending order of prepending leaves the newest patch release of each minor version first.
add_pyenv_interpreters_to_path() {
    command -v pyenv >/dev/null 2>&1 || return 0
    local root version
    root="$(pyenv root)"
    while IFS= read -r version; do
        if [[ "$version" =~ ^3\.(10|11|12|13)\.[0-9]+$ ]] && [ -x "$root/versions/$version/bin/python" ]; then
            PATH="$root/versions/$version/bin:$PATH"
        fi
    done < <(pyenv versions --bare 2>/dev/null | sort -V)
    export PATH
}

# Print the path of a working CPython >= 3.10 (newest stable first), or nothing.
find_python() {
    local candidate path
    for candidate in python3.12 python3.13 python3.11 python3.10 python3; do
        path="$(command -v "$candidate" 2>/dev/null)" || continue
        if "$path" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
            printf '%s\n' "$path"
            return 0
        fi
    done
    return 1
}

# Create (or refresh) a virtual environment and pip-install into it.
# Usage: ensure_venv DIR PYTHON KEY PIP_INSTALL_ARGUMENT...
# Reinstalls only when the interpreter, the arguments or KEY (e.g. a checksum) change.
ensure_venv() {
    local dir="$1" python="$2" key="$3"
    shift 3
    local stamp="$dir/.installed" wanted
    wanted="$("$python" -c 'import sys; print(sys.executable, sys.version)') | $* | $key"
    if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        return 0
    fi
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian splits venv/ensurepip out of its own Python.
        apt_install python3-venv
    fi
    say "creating $dir"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
    printf '%s' "$wanted" >"$stamp"
}
