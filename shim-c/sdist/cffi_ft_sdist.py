"""cffi-ft sdist hook: builds the kit's Rust staticlib for the interpreter running setup.py.

`cargo xtask sdist` puts this file at the root of the patched cffi tree, next to
`cffi-ft/` (the kit's Rust sources, their dependencies vendored, the C shim and
`cffi-ft/sdist.json`). The sdist's setup.py (shim-c/sdist/<cffi>/ patch) imports it
before patch 0001 reads CFFI_FT_STATICLIB / CFFI_FT_SHIM_DIR:

* CFFI_FT_STATICLIB given: nothing is built, that archive is linked (the packagers' route).
* otherwise `cargo build --offline --locked --release` with the step's features, in
  `cffi-ft/` (its `.cargo/config.toml` replaces crates.io with `vendor/`), with
  PYO3_PYTHON = this interpreter and PYO3_BUILD_EXTENSION_MODULE=1 (never link
  libpython), and CFFI_FT_CFFI_HEADERS = this tree's src/cffi (step 4's bindgen).

No network is used. A missing cargo/rustc, a toolchain older than the workspace's
rust-version, or (step 4) no libclang stops the build with one `error:` line.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
KIT = os.path.join(HERE, 'cffi-ft')

with open(os.path.join(KIT, 'sdist.json')) as _f:
    CONFIG = json.load(_f)

# '+ft<N>': the local version label of this sdist (cffi.__version__ stays upstream's)
LOCAL_VERSION = CONFIG['local_version']


def _fail(message):
    sys.stderr.write('error: %s\n' % message)
    sys.exit(1)


def _version_tuple(text):
    m = re.search(r'(\d+)\.(\d+)(?:\.(\d+))?', text)
    return tuple(int(x or 0) for x in m.groups()) if m else None


def _check_toolchain():
    """Returns the cargo to run; stops with one line if cargo/rustc are missing or old."""
    need = CONFIG['rust_version']
    what = ('building cffi %s%s from source needs a Rust toolchain (cargo and rustc >= %s): '
            'install it (Debian/Ubuntu: apt install cargo rustc; Fedora: dnf install cargo '
            'rust; elsewhere: https://rustup.rs), or set CFFI_FT_STATICLIB to a prebuilt '
            'libcffi_ft.a' % (CONFIG['cffi_version'], LOCAL_VERSION, need))
    cargo = os.environ.get('CARGO') or shutil.which('cargo')
    if not cargo:
        _fail(what + ' [no cargo on PATH]')
    rustc = os.environ.get('RUSTC') or shutil.which('rustc')
    if not rustc:
        _fail(what + ' [no rustc on PATH]')
    try:
        out = subprocess.run([rustc, '--version'], capture_output=True, text=True, timeout=120).stdout
    except OSError as e:
        _fail(what + ' [cannot run %s: %s]' % (rustc, e))
    have = _version_tuple(out or '')
    if have is None or have < _version_tuple(need):
        _fail(what + ' [found %s]' % ((out or '').strip() or rustc))
    return cargo


def _target_dir():
    tag = 'py%d%d%s' % (sys.version_info[0], sys.version_info[1],
                        't' if sysconfig.get_config_var('Py_GIL_DISABLED') else '')
    return os.path.join(KIT, 'target', tag)


def provide_staticlib(build=True):
    """Sets CFFI_FT_STATICLIB and CFFI_FT_SHIM_DIR, building the staticlib if `build`."""
    os.environ.setdefault('CFFI_FT_SHIM_DIR', os.path.join(KIT, 'shim-c'))
    target = _target_dir()
    staticlib = os.path.join(target, 'release', 'libcffi_ft.a')
    if build:
        cargo = _check_toolchain()
        env = dict(os.environ)
        env.update({
            'PYO3_PYTHON': sys.executable,
            'PYO3_BUILD_EXTENSION_MODULE': '1',
            'CFFI_FT_CFFI_HEADERS': os.path.join(HERE, 'src', 'cffi'),
            'CARGO_NET_OFFLINE': 'true',
        })
        for var in ('CARGO_TARGET_DIR', 'CARGO_BUILD_TARGET_DIR'):
            env.pop(var, None)
        cmd = [cargo, 'build', '--offline', '--locked', '--release', '--package', 'cffi-ft',
               '--target-dir', target]
        if CONFIG['features']:
            cmd += ['--features', ','.join(CONFIG['features'])]
        sys.stderr.write('cffi-ft: step %d: %s\n' % (CONFIG['step'], ' '.join(cmd)))
        sys.stderr.flush()
        proc = subprocess.run(cmd, cwd=KIT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        sys.stderr.write(proc.stdout)
        if proc.returncode != 0:
            if CONFIG['needs_libclang'] and re.search(r'libclang|clang-sys|Unable to find', proc.stdout):
                _fail('building the cffi-ft staticlib (step %d) needs libclang at build time, '
                      'for bindgen: install it (Debian/Ubuntu: apt install libclang1; Fedora: '
                      'dnf install clang-libs) or point LIBCLANG_PATH at the directory of '
                      'libclang.so' % CONFIG['step'])
            _fail('cargo build of the cffi-ft staticlib failed (exit status %d; output above)'
                  % proc.returncode)
    if os.path.isfile(staticlib):
        os.environ['CFFI_FT_STATICLIB'] = staticlib
