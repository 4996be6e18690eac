"""Installing anywhere (issue 11): a wheel with its configs that runs from any directory, an offline install against
the torch already installed, an install that survives a failed extension build, the toolkit and architecture
search of setup.py, and metadata that never pins torch.

The install tests build into a fresh virtual environment that reuses this interpreter's packages (torch among
them) through a ``.pth`` file, and pass ``--no-index``, so nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SKIP_COPY = {".git", ".venv", "build", "dist", "runs", "outputs", "tests", "__pycache__", ".pytest_cache",
              ".cache", ".whl", ".gl", "results"}


def _load_setup_module():
    spec = importlib.util.spec_from_file_location("tdann_fast_setup_script", REPO / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # __name__ is not "__main__": setup() is not called
    return mod


def _copy_checkout(dest: Path) -> Path:
    """The checkout's sources without build products, runs or virtual environments."""
    def ignore(folder, names):
        return [n for n in names if n in _SKIP_COPY or n.endswith((".so", ".egg-info", ".pyc"))
                or n.startswith(".venv")]
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def _fresh_env(path: Path) -> Path:
    """A virtual environment whose own site-packages comes first and which sees this interpreter's packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    parents = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_reuse_installed_torch.pth").write_text("\n".join(sorted(parents)) + "\n")
    return py


def _pip(py: Path, *args, env=None, cwd=None, check=True):
    cmd = [str(py), "-m", "pip", "install", "--no-index", "--no-build-isolation", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TDANN_FAST_", "PYTHONPATH", "TRITON_"))}
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------- wheel + offline
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A wheel built offline from a copy of the checkout, and a fresh environment with it installed."""
    root = tmp_path_factory.mktemp("install")
    src = _copy_checkout(root / "src")
    wheels = root / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                        "-w", str(wheels), str(src)], capture_output=True, text=True, env=_clean_env(),
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = wheels.glob("tdann_fast-*.whl")
    py = _fresh_env(root / "env")
    _pip(py, str(wheel), env=_clean_env())
    return dict(root=root, src=src, wheel=wheel, py=py)


def test_wheel_ships_configs_extension_and_unpinned_metadata(built):
    with zipfile.ZipFile(built["wheel"]) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    shipped = {Path(n).name for n in names if n.startswith("tdann_fast/configs/")}
    assert shipped == {p.name for p in (REPO / "tdann_fast" / "configs").glob("*.yaml")} and "smoke.yaml" in shipped
    assert any(n.startswith("tdann_fast/_C") and n.endswith(".so") for n in names), "extension missing"
    assert not any(n.startswith(("tests/", "csrc/", "benchmarks/")) for n in names)
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    torch_req = [r for r in requires if r.split(";")[0].replace(" ", "").startswith("torch>")
                 or r.split(";")[0].strip() == "torch"]
    assert torch_req and all("==" not in r and "<" not in r for r in torch_req), torch_req
    core = [r for r in requires if "extra ==" not in r]
    for optional in ("av", "scikit-video", "matplotlib", "tensorboard"):
        assert not any(r.startswith(optional) for r in core), f"{optional} must be an extra, not a core dependency"
    for extra in ("video", "analysis", "dev"):
        assert f"Provides-Extra: {extra}" in meta
    assert "MIT" in meta


def test_installed_wheel_trains_the_smoke_config_from_another_directory(built, tmp_path):
    exe = built["py"].parent / "tdann-fast"
    r = subprocess.run([str(exe), "train", "--config", "smoke", f"run_dir={tmp_path / 'run'}"], cwd=tmp_path,
                       capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "run" / "stage6_full" / "checkpoint.pt").is_file()
    where = subprocess.run([str(built["py"]), "-c", "import tdann_fast, tdann_fast.swap as s; "
                            "print(tdann_fast.__file__); print(s.available_backends())"],
                           cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), check=True).stdout
    assert str(built["root"] / "env") in where.splitlines()[0], where  # the wheel's copy, not the checkout
    assert "'cpp'" in where.splitlines()[1], where


def test_offline_install_of_the_checkout_into_that_environment(built, tmp_path):
    r = _pip(built["py"], "--force-reinstall", "--no-deps", str(built["src"]), env=_clean_env())
    assert "Successfully installed tdann_fast" in r.stdout
    out = subprocess.run([str(built["py"]), "-c", "from tdann_fast.train.config import load_config, configs_dir; "
                          "print(configs_dir()); print(load_config('mt_gpu').batch_size)"],
                         cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), check=True).stdout
    assert str(built["root"] / "env") in out.splitlines()[0] and out.splitlines()[1] == "64", out


def test_a_failed_extension_build_still_installs_and_the_python_backend_is_used(built, tmp_path):
    env = _clean_env(CC="false", CXX="false")  # no working compiler
    r = _pip(built["py"], "-v", "--force-reinstall", "--no-deps", str(built["src"]), env=env)
    assert "installing WITHOUT the C++ extension" in r.stdout + r.stderr
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import numpy as np, tdann_fast.swap as s\n"
            "from tdann_fast import optimize_positions\n"
            "print(s.available_backends())\n"
            "rng = np.random.default_rng(0); pos = rng.uniform(0, 4, (64, 2)); resp = rng.normal(size=(30, 64))\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    for _ in range(2):\n"
            "        new, st = optimize_positions(resp, pos, 2.0, steps=200, side_mm=4.0, progress=False)\n"
            "print(st.backend, sum('Python (NumPy) backend' in str(w.message) for w in seen))\n")
    out = subprocess.run([str(built["py"]), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=_clean_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["['reference']", "reference 1"], out.stdout
    required = _pip(built["py"], "--force-reinstall", "--no-deps", str(built["src"]),
                    env={**env, "TDANN_FAST_REQUIRE_EXT": "1"}, check=False)
    assert required.returncode != 0, "TDANN_FAST_REQUIRE_EXT=1 must fail the install when the build fails"


# ------------------------------------------------------------------------------------------ hidden extension
def test_extension_hidden_the_swap_runs_on_the_python_backend_saying_so_once(tmp_path):
    code = ("import sys, warnings\n"
            "sys.modules['tdann_fast._C'] = None  # the extension cannot be imported\n"
            "import numpy as np\n"
            "from tdann_fast.swap import available_backends, optimize_positions\n"
            "from tdann_fast.swap.backend import extension_error\n"
            "rng = np.random.default_rng(1); pos = rng.uniform(0, 4, (80, 2)); resp = rng.normal(size=(40, 80))\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    a, sa = optimize_positions(resp, pos, 2.0, steps=300, side_mm=4.0, progress=False)\n"
            "    b, sb = optimize_positions(resp, pos, 2.0, steps=300, side_mm=4.0, progress=False)\n"
            "said = [str(w.message) for w in seen if 'Python (NumPy) backend' in str(w.message)]\n"
            "print(available_backends(), sa.backend, len(said), int(sa.accepted.sum()) > 0,\n"
            "      bool(extension_error()))\n"
            "print(said[0])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=_clean_env(PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr[-3000:]
    first, message = r.stdout.splitlines()[:2]
    assert first == "['reference'] reference 1 True True", r.stdout
    assert "pip install --no-build-isolation" in message


# ----------------------------------------------------------------------------------- setup.py's discovery
def _toolkit(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


def test_cuda_toolkit_search_order(tmp_path):
    setup = _load_setup_module()
    env_kit, path_kit = _toolkit(tmp_path / "env_kit"), _toolkit(tmp_path / "path_kit")
    site = tmp_path / "site"
    wheel_kit = _toolkit(site / "nvidia" / "cu13")
    (site / "torch").mkdir()
    default_kit = _toolkit(tmp_path / "usr_local_cuda")
    wrapper = tmp_path / "wrapper_bin" / "nvcc"  # a wrapper script outside any toolkit, like /usr/local/bin/nvcc
    wrapper.parent.mkdir()
    wrapper.write_text("#!/bin/sh\n")

    def find(environ, nvcc=None, torch_dir=site / "torch", defaults=(str(default_kit),)):
        return setup.find_cuda_home(environ, which=lambda name: nvcc, torch_dir=str(torch_dir),
                                    default_roots=defaults)

    assert find({"CUDA_HOME": str(env_kit)}, nvcc=str(path_kit / "bin" / "nvcc"))[0] == str(env_kit)
    assert find({"CUDA_PATH": str(env_kit)})[0] == str(env_kit)
    root, how = find({"CUDA_HOME": str(tmp_path / "nothing")}, nvcc=str(path_kit / "bin" / "nvcc"))
    assert root == str(path_kit) and "nvcc on PATH" in how
    assert find({}, nvcc=str(wrapper))[0] == str(wheel_kit)
    assert find({})[0] == str(wheel_kit)
    assert find({}, torch_dir=tmp_path / "no_site" / "torch")[0] == str(default_kit)
    root, why = find({"CUDA_HOME": str(tmp_path / "nothing")}, nvcc=str(wrapper),
                     torch_dir=tmp_path / "no_site" / "torch", defaults=())
    assert root is None
    assert "CUDA_HOME" in why and "not inside a toolkit" in why and "nvidia wheels" in why


def test_cuda_architectures_from_the_environment_the_gpus_or_the_default():
    setup = _load_setup_module()
    assert setup.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "8.6;9.0+PTX"}, [(8, 0)])[0] == "8.6;9.0+PTX"
    assert setup.cuda_arch_list({}, [(9, 0), (8, 0), (9, 0), (10, 0)])[0] == "8.0;9.0;10.0"
    assert setup.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": " "}, [])[0] == "9.0"


def test_setuptools_floor_and_licence_follow_the_installed_setuptools():
    setup = _load_setup_module()
    assert setup.version_tuple("63.4.3") < setup.MIN_SETUPTOOLS <= setup.version_tuple("84.2.1")
    assert setup.version_tuple("77.0.0rc1") == (77, 0)
    text = "\n".join(line.split("#")[0] for line in (REPO / "pyproject.toml").read_text().splitlines())
    assert "license =" not in text  # a string needs setuptools >= 77 (set in setup.py instead)
    assert '"setuptools>=64"' in text and '"torch"' not in text.split("[project]")[0]
