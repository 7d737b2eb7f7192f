"""Fixtures of the web-demo tests: a tiny DaTaSeg checkpoint, its synthetic world, and the demo
server running on a free local port (in this process, so tests can look at its gate)."""
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvicorn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_helpers import QUICKSTART, tiny_opts  # noqa: E402

from dataseg.data.synthetic import ensure_generated, register_synthetic_world  # noqa: E402
from dataseg.engine.defaults import build_cfg  # noqa: E402
from dataseg.web.app import create_app  # noqa: E402
from dataseg.web.service import Limits, SegmentationService  # noqa: E402

VAL_SET = "synth_pan_val"


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A tiny model's checkpoint (the quickstart config scaled down; built, saved and loaded
    back through MODEL.WEIGHTS) and the quickstart validation images of its small world."""
    tmp = tmp_path_factory.mktemp("web_demo")
    # an untrained model's class scores are low: keep every query so panoptic output has segments
    opts = tiny_opts(tmp, tmp / "output", test=(VAL_SET,),
                     **{"MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD": 0.0})
    cfg = build_cfg(QUICKSTART, opts)
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    seed_all_rng(0)  # the same untrained weights every run
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp)).save("tiny_model")
    opts += ["MODEL.WEIGHTS", str(tmp / "tiny_model.pth")]
    image_root = Path(MetadataCatalog.get(VAL_SET).image_root)
    images = sorted(image_root.glob("*.jpg"))
    assert images, f"no validation images in {image_root}"
    yield SimpleNamespace(opts=opts, cfg=build_cfg(QUICKSTART, opts), images=images, tmp=tmp,
                          cache_dir=tmp / "text_cache")
    register_synthetic_world(None)  # leave the default synthetic registrations behind


def free_socket(host="127.0.0.1"):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


# Small limits so that the refusals are cheap to provoke.
TEST_LIMITS = Limits(max_upload_bytes=2 * 2**20, max_image_pixels=1_000_000, max_side=160,
                     max_vocab_chars=400, max_classes=20, max_queue=1)


@pytest.fixture(scope="session")
def demo_server(tiny_demo):
    """The demo app served by uvicorn on a free port of 127.0.0.1, in a background thread."""
    service = SegmentationService(tiny_demo.cfg, TEST_LIMITS, confidence_threshold=0.0,
                                  examples=tiny_demo.images[:2])
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "demo server did not start"
        time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", service=service)
    server.should_exit = True
    thread.join(10)
    sock.close()
