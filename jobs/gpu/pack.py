"""Build, check and unpack ``.gpu_pack/``: what the lent GPU machine lacks for ``distrec train``.

The lent machine (device kind ``nvidia-h200``: one H200, x86-64, Python 3.12, torch with CUDA,
transformers, peft; no Ray, DeepSpeed or faiss, no internet) receives the working tree plus
the carried folders, 64 MiB in all. ``make gpu-pack`` (``python jobs/gpu/pack.py build``)
fills the git-ignored ``.gpu_pack/`` with three xz-compressed tar files and a manifest:

- ``site.tar.xz``: an installed package tree for CPython 3.12 / manylinux x86-64 (PYTHONPATH
  ``/tmp/site`` there): Ray (ray[default,train,data], pinned in pyproject.toml) without its
  Java jars, the dashboard's JS source maps and symbol tables (binaries stripped); DeepSpeed
  built here from its sdist with ``DS_BUILD_OPS=0`` (pure Python; ops are JIT-built there);
  faiss-cpu; and the dependencies of these that the machine's image lacks (``MISSING_DEPS``).
- ``pins.tar.xz``: transformers and peft at pyproject.toml's pins (the image has other
  versions); ``oneshot.sh`` puts them first on PYTHONPATH only if they import there.
- ``home.tar.xz``: a ``DISTREC_HOME``: MovieLens-100K raw files, the prepared datasets of the
  ``jobs/gpu/*.yaml`` jobs, and ``models/llama-1b`` (a 1B Llama ``config.json`` plus
  SmolLM2's tokenizer; ``model.init: random`` needs no weights).

``build`` fails when the pack plus the repository's travelling files (tracked and untracked
not ignored) reach the device tool's 64 MiB. Only the standard library is imported at module
level: ``verify`` and ``unpack`` run under the GPU machine's own python3.

    python jobs/gpu/pack.py build            # make gpu-pack
    python jobs/gpu/pack.py verify           # listing and size checks of an existing pack
    python3 jobs/gpu/pack.py unpack --site /tmp/site --pins /tmp/site-pins --home DIR
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / ".gpu_pack"
WORK = REPO / "build" / "gpu-pack"  # download/build cache (git-ignored, does not travel)
GPU_JOBS = REPO / "jobs" / "gpu"

DEVICE_LIMIT = 64 * 2**20  # the device tool's limit on the working tree that travels
ARCHIVES = ("site.tar.xz", "pins.tar.xz", "home.tar.xz")
MODEL_NAME = "llama-1b"

#: The target: the lent machine's python3 (KINDS.md: Python 3.12.3, x86-64, glibc manylinux).
PIP_TARGET = [
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
    "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64",
]

#: The closure of ray[default,train,data], deepspeed and faiss-cpu for CPython 3.12 (pip's
#: resolver, 2026-11-30) less what the image already has (KINDS.md, "Python packages already
#: there", read 2026-11-17). Pinned so the pack is the same each time.
MISSING_DEPS = (
    # deepspeed
    "hjson==3.1.0", "pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    # ray core
    "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==2026.9.1",
    # ray[default]: the dashboard, which distrec's launcher starts (include_dashboard=True); these
    # are what ray/dashboard/optional_deps.py imports, plus what Ray imports lazily (virtualenv
    # for runtime_env pip, smart_open, colorful)
    "aiohttp-cors==0.8.1", "colorful==0.5.8", "opencensus==0.11.4", "opencensus-context==0.1.3",
    "opentelemetry-api==1.45.2", "opentelemetry-sdk==1.45.2", "opentelemetry-proto==1.45.2",
    "opentelemetry-exporter-prometheus==0.66b2", "opentelemetry-semantic-conventions==0.66b2",
    "smart_open==9.0.2", "virtualenv==21.15.11", "distlib==0.4.4", "platformdirs==4.14.9",
    "python-discovery==1.9.6",
    # ray[train]
    "tensorboardX==2.6.5",
    # on the image, in a version nobody read: pydantic-core needs typing-extensions >= 4.14.1
    "typing_extensions==4.16.0",
)
#: Left out of the closure on purpose (about 5 MB packed): opencensus's install-time
#: google-api-core -> google-auth -> cryptography/cffi/pyasn1 chain, which neither opencensus's
#: code nor Ray's local path imports (only the GCP autoscaler and BigQuery datasources do), and
#: py-spy, the dashboard's on-demand profiler binary.
LEFT_OUT = ("google-api-core", "google-auth", "googleapis-common-protos", "proto-plus", "pyasn1",
            "pyasn1_modules", "cryptography", "cffi", "pycparser", "py-spy")

#: Removed from the installed tree: nothing ``ray.init``, Ray Train or DeepSpeed reads.
TRIM = (
    "ray/jars",                                    # Java workers (33 MB)
    "ray/dashboard/client/build/**/*.map",         # JS source maps of the dashboard UI
    "virtualenv/seed/wheels/embed/*.whl",          # seed wheels for new virtualenvs (runtime_env pip)
    "**/__pycache__",
)

#: Patterns an unpacked archive must hold (fnmatch on member names), and must not.
REQUIRED = {
    "site.tar.xz": ("deepspeed/__init__.py", "deepspeed-*.dist-info/WHEEL", "ray/__init__.py",
                    "ray/_raylet*.so", "ray/core/src/ray/raylet/raylet", "ray/core/src/ray/gcs/gcs_server",
                    "ray/dashboard/client/build/index.html", "faiss/__init__.py", "faiss/_swigfaiss*.so",
                    "pydantic/__init__.py", "hjson/__init__.py", "jsonschema/__init__.py",
                    "opencensus/__init__.py", "aiohttp_cors/__init__.py"),
    "pins.tar.xz": ("transformers/__init__.py", "peft/__init__.py"),
    "home.tar.xz": ("raw/ml-100k/ml-100k.inter", "raw/ml-100k/ml-100k.item", "raw/ml-100k/ml-100k.user",
                    "prepared/ml-100k-ctr-*/manifest.json", "prepared/ml-100k-generative-*/manifest.json",
                    f"models/{MODEL_NAME}/config.json", f"models/{MODEL_NAME}/tokenizer.json",
                    f"models/{MODEL_NAME}/tokenizer_config.json"),
}
FORBIDDEN = {
    "site.tar.xz": ("ray/jars/*", "ray/jars", "*.map", "deepspeed/ops/*.so", "deepspeed/ops/**/*.so",
                    "torch/*", "transformers/*", "numpy/*"),
    "pins.tar.xz": ("torch/*", "ray/*"),
    "home.tar.xz": ("*.safetensors", "*.gguf", "*.lock"),
}


class PackError(RuntimeError):
    pass


# --- checks (pure functions: the test suite calls them) ------------------------------------------
def budget(repo_size: int, limit: int = DEVICE_LIMIT) -> int:
    """Bytes the pack may take: the device limit less what the repository itself sends."""
    return limit - repo_size


def check_size(pack_size: int, repo_size: int, limit: int = DEVICE_LIMIT) -> None:
    """Raise :class:`PackError` unless pack + repository stay under the device tool's limit."""
    room = budget(repo_size, limit)
    if pack_size >= room:
        raise PackError(f"pack is {mib(pack_size)}, the repository sends {mib(repo_size)}: together "
                        f"{mib(pack_size + repo_size)} >= the device tool's {mib(limit)} limit "
                        f"(the pack may take less than {mib(room)})")


def check_listing(archive: str, names: list[str]) -> list[str]:
    """Problems of an archive's member list against ``REQUIRED``/``FORBIDDEN`` (empty: fine)."""
    names = [n.removeprefix("./").rstrip("/") for n in names]
    problems = [f"{archive}: nothing matches {pat!r}" for pat in REQUIRED.get(archive, ())
                if not any(fnmatch.fnmatchcase(n, pat) for n in names)]
    for pat in FORBIDDEN.get(archive, ()):
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if hits:
            problems.append(f"{archive}: holds {len(hits)} member(s) matching {pat!r}, e.g. {hits[0]}")
    return problems


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def repo_bytes(repo: Path = REPO) -> int:
    """Bytes of the files the device tool sends: tracked plus untracked-not-ignored (git's view)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, capture_output=True, check=True).stdout
    total = 0
    for name in sorted(set(out.decode().split("\0")) - {""}):
        path = repo / name
        if path.is_symlink() or path.is_file():
            total += path.lstat().st_size
    return total


def pack_bytes(pack: Path) -> int:
    return sum(p.lstat().st_size for p in pack.rglob("*") if p.is_file() or p.is_symlink())


def archive_names(path: Path) -> list[str]:
    with tarfile.open(path, "r:xz") as tf:
        return tf.getnames()


def tree_names(folder: Path) -> list[str]:
    """Member names an archive of ``folder`` would have (to check an unpacked tree)."""
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*")]


def verify(pack: Path = PACK, repo: Path | None = REPO) -> dict:
    """Check every archive's listing (and, with ``repo``, the size); return the manifest."""
    problems = []
    for archive in ARCHIVES:
        path = pack / archive
        if not path.is_file():
            problems.append(f"{archive}: missing from {pack}")
            continue
        problems += check_listing(archive, archive_names(path))
    if problems:
        raise PackError("; ".join(problems))
    if repo is not None:
        check_size(pack_bytes(pack), repo_bytes(repo))
    manifest = pack / "MANIFEST.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


# --- unpack (runs on the GPU machine: standard library only) ------------------------------------
def unpack(pack: Path, targets: dict[str, Path], check: bool = False) -> dict[str, float]:
    """Extract ``{archive: folder}``; return seconds per archive. ``check``: then check each
    unpacked tree against ``REQUIRED``/``FORBIDDEN`` (raises :class:`PackError`)."""
    seconds, problems = {}, []
    for archive, dest in targets.items():
        started = time.perf_counter()
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(pack / archive, "r:xz") as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.12
                tf.extractall(dest)
        seconds[archive] = round(time.perf_counter() - started, 2)
        if check:
            problems += check_listing(archive, tree_names(dest))
    if problems:
        raise PackError("; ".join(problems))
    return seconds


# --- build ---------------------------------------------------------------------------------------
def pins() -> dict[str, str]:
    """``name -> version`` of the ``==`` pins in pyproject.toml (dependencies and extras)."""
    text = (REPO / "pyproject.toml").read_text()
    found = re.findall(r'"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^";,\s]+)"', text)
    return {name.lower(): version for name, version in found}


def _pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise PackError(f"{' '.join(cmd)} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")


def _wheel_for(folder: Path, name: str, version: str) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", name).lower()
    for p in sorted(folder.glob("*.whl")):
        dist, ver = p.name.split("-")[:2]
        if re.sub(r"[-_.]+", "_", dist).lower() == stem and ver == version:
            return p
    return None


def download_wheels(specs: list[str], dest: Path) -> list[Path]:
    """The cp312 manylinux wheels of ``specs`` (``name==version``), from pip's registry; cached in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if _wheel_for(dest, *s.split("==")) is None]
    if todo:
        _pip("download", "-q", "--no-deps", *PIP_TARGET, "-d", str(dest), *todo)
    wheels = []
    for spec in specs:
        wheel = _wheel_for(dest, *spec.split("=="))
        if wheel is None:
            raise PackError(f"no wheel of {spec} in {dest} after pip download")
        wheels.append(wheel)
    return wheels


def build_deepspeed(version: str, dest: Path) -> Path:
    """DeepSpeed's sdist built here into a pure-Python wheel (``DS_BUILD_OPS=0``: no prebuilt ops)."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = _wheel_for(dest, "deepspeed", version)
    if wheel is None:
        env = {**os.environ, "DS_BUILD_OPS": "0"}
        _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "--no-binary", "deepspeed", "--no-cache-dir",
             "-w", str(dest), f"deepspeed=={version}", env=env)
        wheel = _wheel_for(dest, "deepspeed", version)
    if wheel is None or not wheel.name.endswith("-py3-none-any.whl"):
        raise PackError(f"expected a pure-Python deepspeed {version} wheel in {dest}, got {wheel}")
    return wheel


def install_tree(wheels: list[Path], dest: Path) -> None:
    """Install ``wheels`` for the target into the empty folder ``dest`` (as ``pip --target`` there would)."""
    if dest.exists():
        shutil.rmtree(dest)
    _pip("install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(dest), *PIP_TARGET,
         *map(str, wheels))


def trim(site: Path, patterns: tuple[str, ...] = TRIM) -> int:
    """Delete what matches ``patterns`` (glob, relative to ``site``); return the bytes freed."""
    freed = 0
    for pat in patterns:
        for path in sorted(site.glob(pat), key=lambda p: -len(p.parts)):
            if path.is_dir() and not path.is_symlink():
                freed += sum(f.lstat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                freed += path.lstat().st_size
                path.unlink()
    return freed


def strip_binaries(site: Path) -> int:
    """``strip --strip-unneeded`` every ELF file with a symbol table (Ray's ship unstripped); bytes freed."""
    strip = shutil.which("strip")
    if strip is None:
        print("pack: no `strip` here (binutils): ELF files stay unstripped (a larger pack)", file=sys.stderr)
        return 0
    freed = 0
    for path in sorted(site.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.stat().st_size < 64 * 1024:
            continue
        with path.open("rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
        before = path.stat().st_size
        mode = path.stat().st_mode
        done = subprocess.run([strip, "--strip-unneeded", str(path)], capture_output=True)
        path.chmod(mode)
        if done.returncode == 0:
            freed += before - path.stat().st_size
    return freed


def tree_digest(src: Path) -> str:
    """sha256 over ``src``'s relative paths, permission bits and contents (what its archive holds)."""
    h = hashlib.sha256()
    for path in sorted(src.rglob("*")):
        h.update(f"{path.relative_to(src).as_posix()}\0{path.lstat().st_mode & 0o777}\0".encode())
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def write_archive(src: Path, dest: Path) -> None:
    """``src``'s contents as a reproducible tar.xz (sorted, fixed owner and times; modes kept)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")

    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        for key, value in (("uid", 0), ("gid", 0), ("uname", ""), ("gname", ""), ("mtime", 0)):
            setattr(ti, key, value)
        return ti

    with lzma.open(tmp, "wb", preset=9 | lzma.PRESET_EXTREME) as xz, \
            tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(src.rglob("*")):
            tf.add(path, arcname=path.relative_to(src).as_posix(), recursive=False, filter=clean)
    tmp.replace(dest)


def build_home(home: Path, cache: Path) -> None:
    """``home``: raw ML-100K, the prepared data of ``jobs/gpu/*.yaml`` and the 1B model folder."""
    previous = os.environ.get("DISTREC_HOME")
    os.environ["DISTREC_HOME"] = str(cache)  # the work cache: fetched wheels and data stay there
    try:
        _build_home(home, cache)
    finally:
        if previous is None:
            os.environ.pop("DISTREC_HOME", None)
        else:
            os.environ["DISTREC_HOME"] = previous


def _build_home(home: Path, cache: Path) -> None:
    from distrec.config import load_job_config
    from distrec.data.fetch import fetch
    from distrec.train.artefacts import ensure_prepared

    if home.exists():
        shutil.rmtree(home)
    raw = Path(fetch("ml-100k"))
    (home / "raw" / "ml-100k").mkdir(parents=True)
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):  # the files the loader reads
        shutil.copy2(raw / name, home / "raw" / "ml-100k" / name)
    for yaml_path in sorted(GPU_JOBS.glob("*.yaml")):
        job = load_job_config(yaml_path)
        if job.model.name_or_path != f"/tmp/distrec-gpu/home/models/{MODEL_NAME}":
            raise PackError(f"{yaml_path}: model.name_or_path must be the pack's model folder")
        prepared = ensure_prepared(job)
        shutil.copytree(prepared, home / "prepared" / prepared.name, dirs_exist_ok=True)
    write_model_folder(home / "models" / MODEL_NAME, cache)


#: The architecture ``jobs/gpu/*.yaml`` build with random weights: TinyLlama-1.1B's shape
#: (22 layers, d 2048, FFN 5632, GQA 32/4) on SmolLM2's 49,152-token vocabulary: 1.17B parameters.
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "initializer_range": 0.02}


def write_model_folder(folder: Path, cache: Path) -> None:
    """``config.json`` of :data:`LLAMA_1B` plus SmolLM2-135M-Instruct's tokenizer (no weights)."""
    from transformers import AutoTokenizer, LlamaConfig

    from distrec.data.fetch import fetch

    gguf = Path(fetch("smollm2", home=cache))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)  # as distrec's convert_gguf
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, architectures=["LlamaForCausalLM"], **LLAMA_1B)
    config.save_pretrained(folder)


def build(pack: Path = PACK, work: Path = WORK) -> dict:
    """Fill ``pack`` (downloads and builds cached under ``work``); raise :class:`PackError` when too big."""
    started = time.perf_counter()
    versions = pins()
    missing = [k for k in ("ray", "deepspeed", "faiss-cpu", "transformers", "peft") if k not in versions]
    if missing:
        raise PackError(f"pyproject.toml pins no version of {missing}")
    wheels_dir, stage = work / "wheels", work / "stage"
    print(f"pack: wheels for CPython 3.12 manylinux x86-64 -> {wheels_dir}", flush=True)
    site_wheels = download_wheels([f"ray=={versions['ray']}", f"faiss-cpu=={versions['faiss-cpu']}",
                                   *MISSING_DEPS], wheels_dir)
    site_wheels.append(build_deepspeed(versions["deepspeed"], wheels_dir))
    pin_wheels = download_wheels([f"transformers=={versions['transformers']}", f"peft=={versions['peft']}"],
                                 wheels_dir)

    install_tree(site_wheels, stage / "site")
    freed = trim(stage / "site") + strip_binaries(stage / "site")
    print(f"pack: site tree trimmed by {mib(freed)}", flush=True)
    install_tree(pin_wheels, stage / "pins")
    print("pack: DISTREC_HOME (ML-100K raw + prepared, 1B model folder)", flush=True)
    build_home(stage / "home", work / "home")

    if pack.exists():
        shutil.rmtree(pack)
    pack.mkdir(parents=True)
    for archive, src in zip(ARCHIVES, ("site", "pins", "home")):
        cached = work / "archives" / f"{archive}.{tree_digest(stage / src)[:16]}"
        if not cached.is_file():  # xz -9e takes minutes: an unchanged tree reuses its archive
            print(f"pack: compressing {archive}", flush=True)
            for old in (work / "archives").glob(f"{archive}.*"):
                old.unlink()
            write_archive(stage / src, cached)
        shutil.copy2(cached, pack / archive)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": "CPython 3.12, manylinux x86-64 (device kind nvidia-h200)",
        "wheels": sorted(p.name for p in site_wheels + pin_wheels),
        "archives": {a: {"bytes": (pack / a).stat().st_size,
                         "sha256": hashlib.sha256((pack / a).read_bytes()).hexdigest(),
                         "unpacked_bytes": sum(f.lstat().st_size for f in (stage / s).rglob("*") if f.is_file())}
                     for a, s in zip(ARCHIVES, ("site", "pins", "home"))},
        "model": {"folder": f"models/{MODEL_NAME}", **LLAMA_1B},
        "trimmed": list(TRIM) + ["ELF symbol tables (strip --strip-unneeded)"],
        "left_out": list(LEFT_OUT),
    }
    (pack / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    verify(pack, repo=None)
    total, repo = pack_bytes(pack), repo_bytes()
    manifest.update({"pack_bytes": total, "repo_bytes": repo, "limit_bytes": DEVICE_LIMIT})
    (pack / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = pack_bytes(pack)
    for a in ARCHIVES:
        info = manifest["archives"][a]
        print(f"pack: {a:13s} {mib(info['bytes']):>10s} (unpacked {mib(info['unpacked_bytes'])})")
    print(f"pack: .gpu_pack/ {mib(total)} + repository {mib(repo)} = {mib(total + repo)} "
          f"of {mib(DEVICE_LIMIT)} ({time.perf_counter() - started:.0f} s)")
    check_size(total, repo)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="fill .gpu_pack/ (network: PyPI) and check its size")
    b.add_argument("--pack", type=Path, default=PACK)
    b.add_argument("--work", type=Path, default=WORK)
    v = sub.add_parser("verify", help="check an existing pack's listings and size")
    v.add_argument("--pack", type=Path, default=PACK)
    v.add_argument("--no-size", action="store_true", help="skip the size check (no git needed)")
    u = sub.add_parser("unpack", help="extract the pack (standard library only: the GPU machine runs this)")
    u.add_argument("--pack", type=Path, default=PACK)
    u.add_argument("--site", type=Path, required=True)
    u.add_argument("--pins", type=Path, required=True)
    u.add_argument("--home", type=Path, required=True)
    u.add_argument("--check", action="store_true", help="check the unpacked trees against the required listing")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            build(args.pack, args.work)
        elif args.cmd == "verify":
            verify(args.pack, repo=None if args.no_size else REPO)
            total = pack_bytes(args.pack)
            print(f"pack: {args.pack} {mib(total)}: listings fine" + ("" if args.no_size else ", size fine"))
        else:
            secs = unpack(args.pack, {"site.tar.xz": args.site, "pins.tar.xz": args.pins,
                                      "home.tar.xz": args.home}, check=args.check)
            print(json.dumps({"unpack_s": secs}))
    except PackError as exc:
        print(f"pack: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
