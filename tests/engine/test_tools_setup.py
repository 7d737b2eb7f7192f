"""Issue 25: what train_net.py accepts every tool accepts; what is wrong is refused up front.

* A run's saved OUTPUT_DIR/config.yaml, whose datasets are declared in a datasets YAML
  (DATASETS.REGISTER), is enough for demo/demo.py, tools/export_model.py, DaTaSegPredictor(cfg)
  and the web demo's dataset list and examples, each in a fresh process (nothing registered by
  this one).
* A checkpoint of another architecture stops train_net.py --eval-only, demo.py and
  export_model.py with one line and a non-zero exit, never a traceback.
* --help of each command line answers before torch, Detectron2 or dataseg are imported.

The "run" is written by train_net.py's own set-up (``setup_cfg``: registration, config.yaml)
and a checkpoint of the model it builds, saved as training saves it (untrained: what is
tested is the plumbing, not the weights).
"""
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from engine_helpers import QUICKSTART, REPO, tiny_opts

from dataseg.data.synthetic.layout import SPLITS, split_paths
from dataseg.data.synthetic.vocabulary import vocabulary
from dataseg.engine import AtomicCheckpointer, build_cfg, parse_args, setup_cfg

VITDET_TINY = str(REPO / "configs" / "quickstart_vitdet_tiny.yaml")
CLIS = {"train_net": "train_net.py", "demo": "demo/demo.py", "web": "demo/web.py",
        "export": "tools/export_model.py"}


def run_py(args, cwd=REPO, timeout=600):
    env = dict(os.environ, DATASEG_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable] + [str(a) for a in args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory (config.yaml naming a datasets YAML, model_final.pth) of a tiny
    ResNet-18 model whose test sets are declared in YAML."""
    from dataseg.data.synthetic import ensure_generated

    tmp = tmp_path_factory.mktemp("tools_run")
    world = ensure_generated(build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "unused")))
    paths = {s.split: split_paths(world, s) for s in SPLITS}
    (tmp / "classes.txt").write_text("".join(" | ".join(n) + "\n"
                                             for n in vocabulary("sem").names))
    sem, box = paths["sem_val"], paths["box_val"]
    (tmp / "my_datasets.yaml").write_text(textwrap.dedent(f"""\
        - name: my_sem_val
          task: semantic
          image_root: {sem.image_root}
          sem_seg_root: {sem.sem_seg_root}
          class_names: classes.txt
        - {{name: my_inst_val, task: instance, image_root: {box.image_root},
            json_file: {box.json_file}}}
        """))
    out = tmp / "run"
    args = parse_args(["--config-file", QUICKSTART, "--datasets", str(tmp / "my_datasets.yaml")]
                      + tiny_opts(tmp, out, train=("synth_sem_train",),
                                  test=("my_sem_val", "my_inst_val")))
    loggers = [logging.getLogger(n) for n in ("dataseg", "detectron2", "d2", "fvcore")]
    saved = [(log, log.propagate, list(log.handlers), log.level) for log in loggers]
    cfg = setup_cfg(args)  # what train_net.py does first: registers, writes config.yaml
    for log, propagate, handlers, level in saved:  # setup_cfg's loggers stop propagating:
        for h in list(log.handlers):  # undo it (this module-scoped fixture runs before the
            if h not in handlers:  # per-test logger restore of conftest.py)
                log.removeHandler(h)
        log.propagate, log.level = propagate, level
    seed_all_rng(0)
    model = build_model(cfg)
    AtomicCheckpointer(model, save_dir=str(out)).save("model_final")
    image = sorted(sem.image_root.iterdir())[0]
    return {"tmp": tmp, "out": out, "config": out / "config.yaml",
            "weights": out / "model_final.pth", "image": image}


def test_run_config_names_the_datasets_file(run):
    text = run["config"].read_text()
    assert str(run["tmp"] / "my_datasets.yaml") in text and "my_sem_val" in text


def test_demo_on_a_yaml_dataset_from_the_run_config(run, tmp_path):
    proc = run_py(["demo/demo.py", "--config-file", run["config"], "--dataset", "my_sem_val",
                   "--input", run["image"], "--output", tmp_path / "demo",
                   "--opts", "MODEL.WEIGHTS", run["weights"]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "demo" / f"{run['image'].stem}_sem.png").is_file()
    said = proc.stdout + proc.stderr
    assert f"loaded full checkpoint {run['weights']}" in said
    assert "has no VERSION" not in said and "CUDA is not available" not in said


def test_export_on_a_yaml_dataset_from_the_run_config(run, tmp_path):
    proc = run_py(["tools/export_model.py", "--config-file", run["config"], "--dataset",
                   "my_sem_val", "--output", tmp_path / "export", "--no-torchscript",
                   "--opts", "MODEL.WEIGHTS", run["weights"]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert f"{len(vocabulary('sem').names)} classes, task semantic" in proc.stdout


PREDICTOR_AND_WEB = """
import json, sys
from dataseg.engine import build_cfg
from dataseg.predictor import DaTaSegPredictor, read_image
from dataseg.web.service import example_images_from_cfg, list_vocabulary_datasets
from detectron2.data import DatasetCatalog
assert "my_sem_val" not in DatasetCatalog.list()  # nothing registered before the predictor
cfg = build_cfg(sys.argv[1], ["MODEL.WEIGHTS", sys.argv[2]])
predictor = DaTaSegPredictor(cfg)  # the config's vocabulary: its first test set, from YAML
out = predictor(read_image(sys.argv[3]))
print(json.dumps({"vocabulary": predictor.vocabulary_name,
                  "sem_seg": list(out["sem_seg"].shape),
                  "datasets": [d["name"] for d in list_vocabulary_datasets()],
                  "examples": [str(p) for p in example_images_from_cfg(cfg)]}))
"""


def test_predictor_and_web_lists_from_the_run_config(run):
    proc = run_py(["-c", PREDICTOR_AND_WEB, run["config"], run["weights"], run["image"]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["vocabulary"] == "my_sem_val" and got["sem_seg"][0] == len(vocabulary("sem").names)
    assert {"my_sem_val", "my_inst_val"} <= set(got["datasets"])
    assert str(run["image"]) in got["examples"]


def test_web_demo_set_up_from_the_run_config(run, tmp_path):
    """demo/web.py's own start (its main, up to listening), then what /api/info answers."""
    script = textwrap.dedent("""
        import json, runpy, sys
        import uvicorn
        import dataseg.web.app as web_app
        served, create_app = {}, web_app.create_app
        def capture(service):  # what the page's GET /api/info answers
            served["info"] = service.info()
            return create_app(service)
        web_app.create_app = capture
        uvicorn.Server.run = lambda self, sockets=None: None  # set up, then do not serve
        sys.argv = ["demo/web.py", "--config-file", sys.argv[1], "--port", "0",
                    "--opts", "MODEL.WEIGHTS", sys.argv[2]]
        try:
            runpy.run_path("demo/web.py", run_name="__main__")
        except SystemExit as e:
            assert not e.code, e.code
        print(json.dumps(served["info"]))
        """)
    proc = run_py(["-c", script, run["config"], run["weights"]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    names = [d["name"] for d in info["datasets"]]
    assert names[:2] == ["my_sem_val", "my_inst_val"], names  # the config's datasets first
    assert run["image"].name in info["examples"]


@pytest.mark.parametrize("tool", ["train_net", "demo", "export"])
def test_checkpoint_of_another_architecture_stops_each_cli(run, tmp_path, tool):
    """The run's ResNet-18 checkpoint given to the tiny ViTDet config: one line, exit != 0."""
    opts = tiny_opts(run["tmp"], tmp_path / "out", train=("synth_sem_train",),
                     test=("synth_sem_val",), **{"MODEL.BACKBONE.NAME": "build_vitdet_backbone",
                                                 "MODEL.WEIGHTS": run["weights"]})
    if tool == "train_net":
        args = ["train_net.py", "--config-file", VITDET_TINY, "--eval-only"] + opts
    elif tool == "demo":
        args = ["demo/demo.py", "--config-file", VITDET_TINY, "--input", run["image"],
                "--output", tmp_path / "demo", "--opts"] + opts
    else:
        args = ["tools/export_model.py", "--config-file", VITDET_TINY, "--output",
                tmp_path / "export", "--opts"] + opts
    proc = run_py(args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "not found in checkpoint" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    prefix = {"train_net": "train_net.py: error: ", "demo": "demo.py: ",
              "export": "export_model.py: "}[tool]
    assert last.startswith(f"{prefix}checkpoint {run['weights']} does not match the model "
                           "built from the config: "), proc.stderr[-3000:]
    assert "model keys missing from it (backbone.vit." in last
    assert not (tmp_path / "demo").exists() and not (tmp_path / "export").exists()


@pytest.mark.parametrize("tool", sorted(CLIS))
def test_help_answers_before_heavy_imports(tool):
    script = (f"import runpy, sys\nsys.argv = [{CLIS[tool]!r}, '--help']\n"
              f"try:\n    runpy.run_path({CLIS[tool]!r}, run_name='__main__')\n"
              "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
              "print('HEAVY', sorted(m for m in ('torch', 'detectron2', 'dataseg', 'cv2', "
              "'uvicorn') if m in sys.modules))\n")
    proc = run_py(["-c", script])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout[-2000:]
