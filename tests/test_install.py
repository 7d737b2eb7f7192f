"""The installable foundation: imports, config keys, the detectron2 install's documented limits."""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_import_and_config():
    from detectron2.config import get_cfg

    import dataseg
    from dataseg.config import add_dataseg_config

    cfg = get_cfg()
    add_dataseg_config(cfg)
    assert cfg.MODEL.DATASEG.NUM_OBJECT_QUERIES == 100
    assert cfg.MODEL.DATASEG.DEC_LAYERS == 9
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1
    assert cfg.MODEL.TEXT_ENCODER.NAME == "minilm"
    cfg.merge_from_list(["MODEL.DATASEG.NUM_OBJECT_QUERIES", "50"])
    assert cfg.MODEL.DATASEG.NUM_OBJECT_QUERIES == 50
    with pytest.raises((KeyError, AssertionError), match="NOT_A_KEY"):
        cfg.merge_from_list(["MODEL.DATASEG.NOT_A_KEY", "1"])
    assert dataseg.__version__


def test_every_config_key_has_a_comment():
    """add_dataseg_config documents each key with a comment line above it (or above its group)."""
    lines = (REPO / "dataseg" / "config.py").read_text().splitlines()
    body = [ln.strip() for ln in lines if ln.strip()]
    for i, line in enumerate(body):
        if line.startswith("cfg.") and "= CN()" not in line:
            j = i - 1
            while j >= 0 and body[j].startswith("cfg.") and "= CN()" not in body[j]:
                j -= 1  # a key may share the comment of the group of keys right above it
            assert body[j].startswith("#") or "= CN()" in body[j], f"uncommented key: {line}"


def test_config_keys_registered_by_dataseg_meta_arch():
    from detectron2.modeling import META_ARCH_REGISTRY

    import dataseg  # noqa: F401

    assert "DaTaSeg" in META_ARCH_REGISTRY


def test_unavailable_detectron2_op_raises_documented_error():
    from detectron2 import _C

    if not getattr(_C, "DATASEG_STUB", False):
        pytest.skip("detectron2 has its compiled ops here (upstream install): nothing unavailable")
    from detectron2.layers import ROIAlignRotated, nms_rotated
    from detectron2.layers.deform_conv import ModulatedDeformConv
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0], [11.0, 10.0, 4.0, 4.0, 30.0]])
    with pytest.raises(_C.Detectron2OpUnavailableError, match=r"'_C.nms_rotated' is unavailable"):
        nms_rotated(boxes, torch.ones(2), 0.5)
    with pytest.raises(RuntimeError, match=r"'_C.box_iou_rotated' is unavailable.*rotated boxes"):
        pairwise_iou_rotated(boxes, boxes)
    with pytest.raises(RuntimeError, match="roi_align_rotated_forward"):
        ROIAlignRotated((2, 2), 1.0, 0)(torch.zeros(1, 1, 8, 8),
                                        torch.tensor([[0.0, 4.0, 4.0, 2.0, 2.0, 0.0]]))
    with pytest.raises(NotImplementedError):  # detectron2's own CPU message, kept as is
        ModulatedDeformConv(2, 2, 3, padding=1)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 18, 4, 4),
                                                 torch.ones(1, 9, 4, 4))


def test_deform_conv_runs_on_cpu_through_torchvision():
    """What still works without compiled ops: DeformConv on CPU tensors (torchvision)."""
    from detectron2.layers import DeformConv

    conv = DeformConv(4, 4, kernel_size=3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    out = conv(x, torch.zeros(1, 18, 8, 8))  # zero offsets = a plain convolution
    ref = torch.nn.functional.conv2d(x, conv.weight, padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_coco_evaluation_takes_a_fast_path():
    """Detectron2's COCOeval_opt where its ops are compiled, else faster-coco-eval
    (tests/engine/test_d2compat.py checks the numbers)."""
    from detectron2 import _C

    from dataseg.engine.evaluation import detectron2_has_compiled_ops, fast_coco_eval

    assert detectron2_has_compiled_ops() == (not getattr(_C, "DATASEG_STUB", False))
    assert fast_coco_eval()


def _install(env_extra, python=sys.executable, tmp_home=None):
    env = {k: v for k, v in os.environ.items() if k not in ("DETECTRON2_SOURCE", "DATASEG_STACK")}
    env.update(PYTHON=python, DATASEG_D2_FROM_GIT="0", **env_extra)
    if tmp_home:
        env["HOME"] = str(tmp_home)
    return subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], capture_output=True,
                          text=True, env=env, timeout=120)


def test_install_plan_names_the_installed_stack():
    from dataseg.collect_env import detectron2_stack

    out = _install({"DATASEG_INSTALL_PLAN": "1"})
    assert out.returncode == 0, out.stderr
    plan = out.stdout.strip().splitlines()[-1]
    assert plan.startswith(f"plan: stack={detectron2_stack()} "), plan
    version = "{}.{}".format(*sys.version_info[:2])
    assert f"lock=requirements/locks/{detectron2_stack()}-py{version}.txt" in plan


def _python(version):
    """A working python3.X (scripts/lock.py's search), or None."""
    spec = importlib.util.spec_from_file_location("dataseg_lock", REPO / "scripts" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    try:
        return lock.find_python(version)
    except SystemExit:
        return None


@pytest.mark.parametrize("env, needle", [
    ({}, "DETECTRON2_SOURCE=/path/to/it"),
    ({"DATASEG_STACK": "legacy"}, "DATASEG_STACK=legacy needs Python 3.11 or older"),
    ({"DETECTRON2_SOURCE": "/nonexistent/d2.tar.gz"}, "no such file or folder"),
])
def test_install_refuses_what_cannot_be_had_before_downloading(tmp_path, env, needle):
    """Python 3.12 without github.com or a Detectron2 archive (or asked for the v0.6 stack, or
    given a missing archive): one line on what to do, exit 1, nothing installed."""
    python = _python("3.12")
    if python is None:
        pytest.skip("no python3.12 on this machine")
    out = _install(env, python=python, tmp_home=tmp_path)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and needle in out.stderr, out.stderr
    assert "==> torch" not in out.stdout and "Collecting" not in out.stdout


def test_locks_cover_every_stack_and_python():
    """One lock per stack and supported Python, each pinning torch.txt's torch, every package
    of base.txt, and the stack's numpy (legacy < 1.24, main 2.x)."""
    locks = REPO / "requirements" / "locks"
    base = [ln.split(";")[0].strip().lower() for ln in (REPO / "requirements" / "base.txt")
            .read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    torch_pins = [ln.strip() for ln in (REPO / "requirements" / "torch.txt").read_text()
                  .splitlines() if "==" in ln]
    expected = [f"main-py3.{m}.txt" for m in (10, 11, 12, 13)] + \
        [f"legacy-py3.{m}.txt" for m in (10, 11)]
    assert sorted(p.name for p in locks.glob("*.txt")) == sorted(expected)
    for name in expected:
        pins = dict(ln.strip().lower().split("==") for ln in (locks / name).read_text()
                    .splitlines() if "==" in ln)
        norm = {k.replace("_", "-"): v for k, v in pins.items()}
        missing = [b for b in base if b.replace("_", "-") not in norm]
        assert not missing, f"{name} lacks {missing}"
        for pin in torch_pins:
            package, version = pin.lower().split("==")
            assert norm[package] == version, name
        numpy_major = int(norm["numpy"].split(".")[0])
        assert (numpy_major == 1 and norm["numpy"] < "1.24") if name.startswith("legacy") \
            else numpy_major == 2, (name, norm["numpy"])


def test_collect_env_reports_the_install():
    out = subprocess.run([sys.executable, "-m", "dataseg.collect_env"], capture_output=True,
                         text=True, check=True, cwd="/").stdout
    for needle in ("torch", "torchvision", "CUDA available", "detectron2", "deformable attention",
                   "minilm"):
        assert needle in out, out
    from detectron2 import _C

    if getattr(_C, "DATASEG_STUB", False):
        assert "no compiled ops" in out


def test_import_writes_nothing_and_opens_no_socket(tmp_path):
    """`import dataseg` registers things and nothing else: no files, no network."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    script = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise AssertionError("network access at import")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import dataseg
        from detectron2.data import DatasetCatalog
        from detectron2.modeling import META_ARCH_REGISTRY
        assert "DaTaSeg" in META_ARCH_REGISTRY
        print(len(DatasetCatalog.list()))
    """)
    env = dict(os.environ, HOME=str(home), DETECTRON2_DATASETS=str(tmp_path / "data"),
               DATASEG_CACHE=str(tmp_path / "cache"), XDG_CACHE_HOME=str(tmp_path / "xdg"),
               MPLCONFIGDIR=str(tmp_path / "mpl"))
    subprocess.run([sys.executable, "-c", script], cwd=work, env=env, check=True,
                   capture_output=True, text=True)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], f"import dataseg wrote files: {written}"
