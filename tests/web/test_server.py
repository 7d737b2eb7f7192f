"""The demo's JSON API on a real server (uvicorn on a free local port) with a tiny model."""
import base64
import io
import json
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from dataseg.outputs import draw_scale
from dataseg.text import cache_entry_path, text_encoder_kwargs_from_cfg
from dataseg.web.service import Limits, decode_image

VOCAB = "person; automobile|car; sheep; kite; sky:stuff; lawn:stuff"
VOCAB_NAMES = {"person", "automobile", "sheep", "kite", "sky", "lawn"}


def post(url, fields=None, files=None, raw=None, content_type=None, timeout=120):
    """POSTs multipart/form-data (or ``raw`` bytes); returns (status, headers, parsed JSON)."""
    if raw is None:
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                         f"{value}\r\n".encode())
        for key, (filename, data) in (files or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; '
                         f'filename="{filename}"\r\nContent-Type: application/octet-stream'
                         "\r\n\r\n".encode() + data + b"\r\n")
        raw = b"".join(parts) + f"--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    request = urllib.request.Request(url, data=raw, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def segment(server, image_bytes, name="image.jpg", **fields):
    return post(server.url + "/segment", fields=fields, files={"image": (name, image_bytes)})


def png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_page_and_info(demo_server, tiny_demo):
    status, page = get(demo_server.url + "/")
    assert status == 200 and b'id="vocab"' in page and b'id="overlay"' in page
    info = json.loads(get(demo_server.url + "/api/info")[1])
    assert info["tasks"] == ["semantic", "panoptic", "instance"]
    names = [d["name"] for d in info["datasets"]]
    assert names[0] == "synth_pan_val"  # the config's test set first
    assert all(d["num_classes"] <= 20 for d in info["datasets"])  # TEST_LIMITS.max_classes
    assert info["examples"] == [p.name for p in tiny_demo.images[:2]]
    assert get(demo_server.url + "/examples/" + info["examples"][0])[1] == \
        tiny_demo.images[0].read_bytes()


@pytest.mark.parametrize("task", ["panoptic", "semantic", "instance"])
def test_segment_a_validation_image(demo_server, tiny_demo, task):
    image = tiny_demo.images[0]
    h, w = np.asarray(Image.open(image)).shape[:2]
    status, _, answer = segment(demo_server, image.read_bytes(), image.name, vocab=VOCAB,
                                task=task)
    assert status == 200, answer
    assert answer["task"] == task
    assert answer["image"] == {"height": h, "width": w, "resized_from": None}
    assert [c["name"] for c in answer["vocabulary"]["classes"]] == \
        ["person", "automobile", "sheep", "kite", "sky", "lawn"]
    segments = answer["segments"]
    assert segments, "the tiny model found nothing"
    for s in segments:
        assert set(s) >= {"id", "label", "score", "area", "isthing"}
        assert s["label"] in VOCAB_NAMES and s["area"] > 0
        assert s["isthing"] == (s["label"] not in ("sky", "lawn"))
    if task != "instance":  # instance masks may overlap
        assert sum(s["area"] for s in segments) <= h * w
        assert len({s["id"] for s in segments}) == len(segments)
    if task == "semantic":  # every pixel has a class
        assert sum(s["area"] for s in segments) == h * w
    vis = Image.open(io.BytesIO(base64.b64decode(answer["visualization_png_base64"])))
    s = draw_scale(h, w)  # small images are drawn upscaled (labels in proportion)
    assert vis.format == "PNG" and vis.size == (w * s, h * s) and s > 1
    status, data = get(demo_server.url + answer["download"])
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    stem = image.stem
    assert f"{stem}.jpg" in names
    expected = {"semantic": [f"{stem}_sem.png"],
                "panoptic": [f"panoptic/{stem}.png", "panoptic.json", f"{stem}_sem.png"],
                "instance": ["instances_results.json", "coco_images.json"]}[task]
    assert set(expected) <= set(names), names
    if task == "panoptic":
        pan = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("panoptic.json"))
        infos = pan["annotations"][0]["segments_info"]
        assert sorted(i["area"] for i in infos) == sorted(s["area"] for s in segments)


def test_dataset_vocabulary(demo_server, tiny_demo):
    status, _, answer = segment(demo_server, tiny_demo.images[1].read_bytes(),
                                dataset="synth_pan_val", task="panoptic")
    assert status == 200, answer
    names = {c["name"] for c in answer["vocabulary"]["classes"]}
    assert answer["vocabulary"]["source"] == "synth_pan_val" and "sea star" in names
    assert {s["label"] for s in answer["segments"]} <= names


def test_first_seen_vocabulary_is_embedded_once_then_cached(demo_server, tiny_demo):
    vocab = f"zebra; tram|streetcar; meadow:stuff; sample {uuid.uuid4().hex[:6]}"
    status, _, check = post(demo_server.url + "/vocabulary", fields={"vocab": vocab})
    assert status == 200 and check["cached"] is False
    assert [c["isthing"] for c in check["classes"]] == [True, True, False, True]
    synonyms = [c["synonyms"] for c in check["classes"]]
    entry = cache_entry_path(synonyms, **text_encoder_kwargs_from_cfg(tiny_demo.cfg))
    assert str(entry).startswith(str(tiny_demo.cache_dir)) and not entry.exists()
    status, _, embedded = post(demo_server.url + "/vocabulary",
                               fields={"vocab": vocab, "embed": "1"})
    assert status == 200 and embedded["cached"] is False and entry.is_file()
    mtime = entry.stat().st_mtime_ns
    status, _, again = post(demo_server.url + "/vocabulary", fields={"vocab": vocab})
    assert again["cached"] is True
    status, _, answer = segment(demo_server, tiny_demo.images[0].read_bytes(), vocab=vocab,
                                task="semantic")
    assert status == 200 and answer["vocabulary"]["cached"] is True
    assert entry.stat().st_mtime_ns == mtime  # read from the cache, not embedded again


def _jpeg(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 140, 60)).save(buf, format="JPEG")
    return buf.getvalue()


def test_large_image_is_downscaled(demo_server):
    # TEST_LIMITS.max_side = 160
    status, _, answer = segment(demo_server, _jpeg((400, 300)), "big.jpg", vocab=VOCAB,
                                task="semantic")
    assert status == 200, answer
    assert answer["image"] == {"height": 120, "width": 160, "resized_from": [300, 400]}


def _claimed_size_png(width, height):
    """A 1x1 PNG whose header claims ``width`` x ``height`` (Pillow refuses to open it)."""
    data = bytearray(_encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # after the signature: length (4), b"IHDR" (4), width, height, ..., crc
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4:ihdr + 21])))
    return bytes(data)


def _bad_requests(image_bytes):
    """(what, request kwargs, expected status, words the message must contain)."""
    ok = {"vocab": VOCAB, "task": "panoptic"}
    return [
        ("non-image upload", dict(files={"image": ("notes.txt", b"just some text")},
                                  fields=ok), 415, "notes.txt"),
        ("truncated image", dict(files={"image": ("cut.jpg", image_bytes[:200])}, fields=ok),
         415, "cut.jpg"),
        ("empty file", dict(files={"image": ("empty.png", b"")}, fields=ok), 400, "empty"),
        ("no image", dict(fields=ok), 400, "image"),
        ("empty vocabulary", dict(files={"image": ("a.jpg", image_bytes)},
                                  fields={"vocab": "  ", "task": "panoptic"}), 400, "empty"),
        ("only commas", dict(files={"image": ("a.jpg", image_bytes)},
                             fields={"vocab": ", ,", "task": "panoptic"}), 400, "empty"),
        ("bad mark", dict(files={"image": ("a.jpg", image_bytes)},
                          fields={"vocab": "cat:fluffy", "task": "panoptic"}), 400, "fluffy"),
        ("vocabulary too long", dict(files={"image": ("a.jpg", image_bytes)},
                                     fields={"vocab": "x" * 401, "task": "panoptic"}),
         400, "limit"),
        ("too many classes", dict(files={"image": ("a.jpg", image_bytes)},
                                  fields={"vocab": ";".join(f"c{i}" for i in range(21)),
                                          "task": "panoptic"}), 400, "21 classes"),
        ("unknown dataset", dict(files={"image": ("a.jpg", image_bytes)},
                                 fields={"dataset": "no_such_set", "task": "panoptic"}),
         400, "no_such_set"),
        ("vocab and dataset", dict(files={"image": ("a.jpg", image_bytes)},
                                   fields={"vocab": "cat", "dataset": "synth_pan_val"}),
         400, "not both"),
        ("unknown task", dict(files={"image": ("a.jpg", image_bytes)},
                              fields={"vocab": "cat", "task": "depth"}), 400, "depth"),
        ("too many pixels", dict(files={"image": ("huge.png", png_bytes(
            np.zeros((1001, 1000, 3), np.uint8)))}, fields=ok), 413, "MP"),
        ("decompression bomb", dict(files={"image": ("bomb.png", _claimed_size_png(
            30000, 30000))}, fields=ok), 413, "bomb.png"),
        ("upload over the size limit", dict(files={"image": ("big.bin", b"\0" * (3 * 2**20))},
                                            fields=ok), 413, "MB"),
        ("not multipart", dict(raw=b'{"vocab": "cat"}', content_type="application/json"),
         400, "multipart"),
    ]


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(demo_server, tiny_demo):
    image_bytes = tiny_demo.images[0].read_bytes()
    for what, kwargs, expected, words in _bad_requests(image_bytes):
        status, _, answer = post(demo_server.url + "/segment", **kwargs)
        assert status == expected, (what, status, answer)
        assert words.lower() in answer["error"].lower(), (what, answer)
        assert json.loads(get(demo_server.url + "/healthz")[1])["ok"] is True
    status, _, answer = segment(demo_server, image_bytes, vocab=VOCAB, task="panoptic")
    assert status == 200 and answer["segments"]
    status, _, answer = post(demo_server.url + "/vocabulary", fields={"vocab": ""})
    assert status == 400 and "empty" in answer["error"]


def test_busy_answer_instead_of_piling_up(demo_server, tiny_demo):
    """One request runs (here: the test holds the gate), max_queue=1 may wait, more get 503."""
    gate = demo_server.service.gate
    image_bytes = tiny_demo.images[0].read_bytes()
    waiting = {}

    def queued():
        waiting["answer"] = segment(demo_server, image_bytes, vocab=VOCAB, task="semantic")

    with gate():
        thread = threading.Thread(target=queued)
        thread.start()
        deadline = time.monotonic() + 30
        while gate.pending < 2:
            assert time.monotonic() < deadline, "the queued request never reached the gate"
            time.sleep(0.02)
        status, headers, answer = segment(demo_server, image_bytes, vocab=VOCAB,
                                          task="semantic")
        assert status == 503 and "busy" in answer["error"]
        assert headers.get("Retry-After") == "5"
        status, _, answer = post(demo_server.url + "/vocabulary",
                                 fields={"vocab": f"unseen {uuid.uuid4().hex[:6]}",
                                         "embed": "1"})
        assert status == 503
        assert json.loads(get(demo_server.url + "/healthz")[1])["pending"] == 2
    thread.join(60)
    assert waiting["answer"][0] == 200  # the queued one ran once the gate was free
    assert gate.pending == 0


def test_unknown_result_and_example_are_404(demo_server):
    for path in ("/results/0123456789abcdef.zip", "/examples/nothing.jpg"):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(demo_server.url + path)
        assert e.value.code == 404


def _encoded(image, fmt, **kwargs):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_awkward_but_legal_images(demo_server):
    """Alpha, grey, 16-bit, palette, CMYK, EXIF-rotated, 1x1 and a thin strip all segment;
    the answer's size is the upright (and, over max_side=160, downscaled) image's."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees": the upright image is 30 wide, 60 high
    ramp = (np.arange(2000).reshape(40, 50) * 30).astype(np.uint16)
    cases = {
        "alpha.png": (_encoded(Image.new("RGBA", (50, 40), (10, 200, 30, 128)), "PNG"), 40, 50),
        "grey.png": (_encoded(Image.new("L", (50, 40), 77), "PNG"), 40, 50),
        "deep.png": (_encoded(Image.fromarray(ramp), "PNG"), 40, 50),
        "palette.gif": (_encoded(Image.new("P", (50, 40)), "GIF"), 40, 50),
        "cmyk.jpg": (_encoded(Image.new("CMYK", (50, 40), (0, 100, 200, 0)), "JPEG"), 40, 50),
        "rotated.jpg": (_encoded(Image.new("RGB", (60, 30), (200, 0, 0)), "JPEG", exif=exif),
                        60, 30),
        "dot.png": (_encoded(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), 1, 1),
        "strip.png": (_encoded(Image.new("RGB", (600, 3), (9, 90, 9)), "PNG"), 1, 160),
    }
    for name, (data, h, w) in cases.items():
        status, _, answer = segment(demo_server, data, name, vocab=VOCAB, task="semantic")
        assert status == 200, (name, answer)
        assert (answer["image"]["height"], answer["image"]["width"]) == (h, w), name
        assert sum(s["area"] for s in answer["segments"]) == h * w, name


def test_sixteen_bit_grey_levels_are_stretched_not_clipped():
    ramp = (np.arange(2000).reshape(40, 50) * 30).astype(np.uint16)  # 0 .. 59970
    rgb, _ = decode_image(_encoded(Image.fromarray(ramp), "PNG"), "deep.png", Limits())
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[-1, -1].tolist() == [255, 255, 255]
    assert len(np.unique(rgb[..., 0])) > 200  # Pillow's own conversion leaves ~2 levels
