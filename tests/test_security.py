"""Security and fault holes of the data, model and output paths (issue 13), each with the input that exposed it:
a file name that is not UTF-8, links out of the dataset folder, split words in file names, truncated and huge
images, a checkpoint with its own code (``auto_map``) and stdin answering ``y``, corrupt weights, a read-only
and a full output location, bad input under ``accelerate launch`` (1 and 2 processes), and the paths the run
summary publishes. The Space's holes are in test_space_security.py; the big-image memory bound is measured in
bench/bench_big_images.py, not here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from _audit import recording_opens
from test_probe_script import (  # noqa: F401
    SCRIPT,
    assets,
    launch_command,
    launch_env,
    make_imagefolder,
    probe,
    reset_accelerate_state,
    run_in_process,
    save_tiny_vit,
)

from hf_isi import data
from hf_isi.data import (
    DatasetSpec,
    ImageBatches,
    UnreadableImageError,
    default_image_processor,
    load_image,
    load_image_dataset,
    num_classes,
)
from hf_isi.models import ModelAdapter, ModelError

ROOT = Path(__file__).resolve().parents[1]


def png(path: Path, size: tuple[int, int] = (12, 12), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def small_folder(root: Path, per_class: int = 3) -> Path:
    for c, label in enumerate(("cat", "dog")):
        for i in range(per_class):
            png(root / "validation" / label / f"{i:03d}.png", seed=10 * c + i)
    return root


def python_probe(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``python scripts/probe.py ARGS`` as a user runs it."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=launch_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False, **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


# -- data: names, links, splits ------------------------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_skipped_and_counted(tmp_path):
    """Before: datasets' DatasetGenerationError traceback, and the file not named."""
    root = small_folder(tmp_path / "images")
    bad = os.path.join(os.fsencode(root / "validation" / "cat"), b"bad\xff.png")
    with open(bad, "wb") as f:
        f.write((root / "validation" / "cat" / "000.png").read_bytes())
    ds = load_image_dataset(DatasetSpec(dataset=str(root)))
    assert len(ds) == 6 and num_classes(ds, "label") == 2
    refused: list = []
    load_image_dataset(DatasetSpec(dataset=str(root)), refused=refused)
    assert [(r.path, "UTF-8" in r.reason) for r in refused] == [("validation/cat/bad\\xff.png", True)]
    with pytest.raises(UnreadableImageError, match=r"'validation/cat/bad\\xff.png' has a name .* drop --strict"):
        load_image_dataset(DatasetSpec(dataset=str(root)), strict=True)


def test_links_out_of_the_dataset_folder_are_never_opened(tmp_path):
    """Before: an image outside the folder was analysed, and /etc/passwd was opened and read."""
    root = small_folder(tmp_path / "images")
    outside = tmp_path / "outside"
    secret = png(outside / "secret.png", seed=99)
    cat = root / "validation" / "cat"
    (cat / "evil.png").symlink_to(secret)
    (cat / "passwd.png").symlink_to("/etc/passwd")
    (root / "validation" / "elsewhere").symlink_to(outside, target_is_directory=True)
    (cat / "twin.png").symlink_to(cat / "000.png")  # a link that stays inside is fine
    with recording_opens() as opened:
        ds = load_image_dataset(DatasetSpec(dataset=str(root)))
        batches = list(ImageBatches(ds, default_image_processor((8, 8)), batch_size=4))
    touched = [p for p in opened if Path(p).name in ("secret.png", "evil.png", "passwd.png", "passwd")]
    assert not touched, touched
    assert sum(len(b.ids) for b in batches) == 7 and not any(b.skipped for b in batches)
    refused: list = []
    load_image_dataset(DatasetSpec(dataset=str(root)), refused=refused)
    assert sorted(r.path for r in refused) == ["validation/cat/evil.png", "validation/cat/passwd.png",
                                               "validation/elsewhere"]
    assert all("outside the dataset folder" in r.reason for r in refused)
    with pytest.raises(UnreadableImageError, match="'validation/cat/evil.png' is a link to outside"):
        load_image_dataset(DatasetSpec(dataset=str(root)), strict=True)


def test_fifos_and_devices_in_the_folder_are_never_opened(tmp_path):
    root = small_folder(tmp_path / "images")
    os.mkfifo(root / "validation" / "cat" / "fifo.png")
    listing = data.list_image_folder(root)
    assert [(r.path, r.reason) for r in listing.refused] == [("validation/cat/fifo.png", "is not a regular file")]
    assert listing.num_images("validation") == 6
    with pytest.raises(UnreadableImageError, match="cannot be decoded"):  # a path given directly: not opened
        load_image(str(root / "validation" / "cat" / "fifo.png"))
    with pytest.raises(UnreadableImageError):
        load_image("/dev/zero")


def test_split_words_in_file_names_do_not_drop_images(tmp_path, caplog):
    """Before: datasets read "valid" in 12 of 20 file names as a split and silently dropped the other 8 (or the
    12, depending on the split asked for)."""
    root = tmp_path / "images"
    for c, label in enumerate(("cat", "dog")):
        for i in range(10):
            png(root / label / (f"sample_valid_{i}.png" if i < 6 else f"sample_{i}.png"), seed=10 * c + i)
    with caplog.at_level("INFO", logger="hf_isi.data"):
        for split in ("validation", "train"):
            ds = load_image_dataset(DatasetSpec(dataset=str(root), split=split))
            assert len(ds) == 20 and num_classes(ds, "label") == 2
    assert "has no split subfolders" in caplog.text and "20 images are loaded as one split" in caplog.text


def test_split_subfolders_still_give_the_splits(tmp_path):
    root = tmp_path / "images"
    for split, count in (("train", 4), ("val2017", 2), ("test", 3)):
        for label in ("cat", "dog"):
            for i in range(count):
                png(root / split / label / f"{i}.png", seed=i)
    png(root / "stray.png")
    sizes = {s: len(load_image_dataset(DatasetSpec(dataset=str(root), split=s))) for s in ("train", "validation",
                                                                                             "test")}
    assert sizes == {"train": 8, "validation": 4, "test": 6}
    assert data.list_image_folder(root).unsplit == 1


# -- data: naming files, large images ------------------------------------------------------------------------
def test_messages_name_the_file_not_the_row(tmp_path):
    """Before: ``image 4 cannot be decoded (image file is truncated)`` for --strict."""
    root = small_folder(tmp_path / "images")
    whole = png(tmp_path / "whole.png", size=(64, 64)).read_bytes()
    (root / "validation" / "cat" / "001.png").write_bytes(whole[: len(whole) // 2])
    ds = load_image_dataset(DatasetSpec(dataset=str(root)))
    with pytest.raises(UnreadableImageError, match=r"image '.*validation/cat/001.png' cannot be decoded .*truncated"):
        list(ImageBatches(ds, default_image_processor((8, 8)), batch_size=4, strict=True))


def test_images_above_the_decode_cap_are_refused_from_the_header(tmp_path, monkeypatch):
    """Before: any image within PIL's bomb limit (179 MP) was decoded whole, then downscaled."""
    import PIL.ImageFile

    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 100 * 100)
    monkeypatch.setattr(data, "MAX_DECODE_PIXELS", 200 * 200, raising=False)
    big = png(tmp_path / "big.png", size=(300, 300))
    photo = tmp_path / "photo.jpg"
    PIL.Image.open(big).save(photo, quality=90)
    decode = PIL.ImageFile.ImageFile.load

    def no_decode(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(UnreadableImageError, match=r"'big.png' is 300x300 pixels .* above the 0 MP"):
        load_image(str(big), where="image 'big.png'")
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", decode)
    out = load_image(str(photo))  # a JPEG is decoded at 1/2 scale (150 x 150 <= the cap), then downscaled
    assert out.width * out.height <= 100 * 100 and out.size[0] == out.size[1]
    mid = load_image(str(png(tmp_path / "mid.png", size=(180, 180))))
    assert mid.width * mid.height <= 100 * 100


def test_large_images_are_preprocessed_in_bounded_chunks(tmp_path, monkeypatch):
    """The chunks (one image each here) give exactly the pixel values of one call per batch."""
    root = tmp_path / "images"
    for i in range(5):
        png(root / "cat" / f"{i}.png", size=(40 + 7 * i, 30), seed=i)
    ds = load_image_dataset(DatasetSpec(dataset=str(root)))
    processor = default_image_processor((16, 16))
    whole = next(iter(ImageBatches(ds, processor, batch_size=5))).pixel_values
    monkeypatch.setattr(data, "MAX_PENDING_PIXELS", 1, raising=False)
    chunked = next(iter(ImageBatches(ds, processor, batch_size=5))).pixel_values
    assert chunked.shape == (5, 3, 16, 16) and (chunked == whole).all()


# -- models --------------------------------------------------------------------------------------------------
def custom_code_checkpoint(root: Path, tiny_vit: str) -> tuple[Path, Path]:
    """A model folder whose config needs its own code (``auto_map``), and a ViT whose image processor does;
    either file, if executed, writes MARKER."""
    marker = root / "MARKER"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('custom code ran')\n"
    evil = root / "evil-model"
    evil.mkdir(parents=True)
    (evil / "configuration_evil.py").write_text(code + "from transformers import PretrainedConfig\n"
                                                "class EvilConfig(PretrainedConfig):\n    model_type = 'evil-vit'\n")
    (evil / "config.json").write_text(json.dumps({"model_type": "evil-vit", "architectures": ["EvilModel"],
                                                  "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                                                               "AutoModel": "configuration_evil.EvilConfig"}}))
    processor = root / "vit-with-processor-code"
    shutil.copytree(tiny_vit, processor)
    (processor / "image_processing_evil.py").write_text(code)
    config = json.loads((processor / "preprocessor_config.json").read_text())
    config.update(image_processor_type="EvilImageProcessor",
                  auto_map={"AutoImageProcessor": "image_processing_evil.EvilImageProcessor"})
    (processor / "preprocessor_config.json").write_text(json.dumps(config))
    return evil, processor


def test_a_checkpoint_s_own_code_never_runs(assets, tmp_path):  # noqa: F811
    """Before: transformers asked (for up to 15 s) whether to run the folder's configuration_*.py, and ``y`` on
    stdin ran it."""
    evil, with_processor_code = custom_code_checkpoint(tmp_path, assets["models"][0])
    result = python_probe(["--model_name_or_path", str(evil), "--dataset", str(assets["images"]),
                           "--output_dir", str(tmp_path / "out")], input="y\n" * 10)
    assert not (tmp_path / "MARKER").exists(), "the checkpoint's code ran"
    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result.stderr) == [(
        f"probe.py: error: cannot load '{evil}': it needs its own Python code (auto_map), and hf_isi never runs a "
        "checkpoint's code (trust_remote_code=False); use an architecture that ships with transformers")]
    adapter = ModelAdapter.from_pretrained(with_processor_code)  # the model loads; its processor code does not run
    assert adapter.image_processor is None and not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_weights_are_one_line_naming_the_file(assets, tmp_path, damage):  # noqa: F811
    """Before: a 30-line SafetensorError traceback, exit status 1."""
    model = tmp_path / "vit"
    shutil.copytree(assets["models"][0], model)
    weights = model / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\xff" * 8 + raw[8:])
    result = python_probe(["--model_name_or_path", str(model), "--dataset", str(assets["images"]),
                           "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"the weights file '{weights}' is corrupt or truncated" in lines[0], lines
    with pytest.raises(ModelError, match="model.safetensors' is corrupt or truncated"):
        ModelAdapter.from_pretrained(model)


# -- outputs -------------------------------------------------------------------------------------------------
def _mount_tmpfs(path: Path, options: str) -> bool:
    """A tmpfs at ``path`` (needs root; False when it cannot be mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          check=False).returncode == 0


@contextlib.contextmanager
def read_only_folder(path: Path, monkeypatch):
    """A folder nobody may write to: a read-only tmpfs where the test may mount one (root ignores permissions),
    mode 0555 for other users; as root without mount, every attempt to create a file there fails with EROFS
    (simulated)."""
    if _mount_tmpfs(path, "ro,size=1m"):
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    if os.geteuid() == 0:
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(probe.tempfile, "mkstemp", read_only)
        yield path
        return
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def test_a_read_only_output_location_is_one_line(assets, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Before: an OSError traceback from the staging folder's mkdir."""
    with read_only_folder(tmp_path / "ro", monkeypatch) as folder:
        code, err = run_in_process(["--model_name_or_path", assets["models"][0], "--dataset",
                                    str(assets["images"]), "--output_dir", str(folder / "out")], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"cannot write to {folder}: " in err and "choose another --output_dir" in err
        assert ("Read-only file system" in err) or ("Permission denied" in err), err
        assert list(folder.iterdir()) == []


@contextlib.contextmanager
def full_disk(path: Path, monkeypatch):
    """An output location that fills up: a 4 MB tmpfs where the test may mount one (the first checkpoint of
    the tiny model is 16 MB); otherwise every checkpoint write fails with ENOSPC (simulated)."""
    if _mount_tmpfs(path, "size=4m"):
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)  # lazy: even while a file is open
        return

    def no_space(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(probe._ErrnoWriter, "write", no_space)
    yield path


def test_a_full_output_disk_is_one_line_and_leaves_no_temporary_file(assets, tmp_path, capsys,  # noqa: F811
                                                                      monkeypatch):
    """Before: ``basic_ios::clear: iostream error`` (a RuntimeError traceback) and a 2 MB .pt.tmp left behind."""
    with full_disk(tmp_path / "disk", monkeypatch) as disk:
        code, err = run_in_process(["--model_name_or_path", assets["models"][0], "--dataset",
                                    str(assets["images"]), "--output_dir", str(disk / "out"),
                                    "--checkpoint_every", "1", "--no_plots"], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "No space left on device" in err and "model-0-rank-0.pt" in err and "--resume" in err, err
        assert not [p for p in disk.rglob("*") if ".tmp" in p.name], sorted(disk.rglob("*"))


# -- accelerate launch ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("num_processes", [1, 2])
def test_bad_input_under_accelerate_launch(assets, tmp_path, num_processes):  # noqa: F811
    """Plain ``accelerate launch``: our line once (not once per process), then the launcher's own report, exit 1
    (accelerate 1.15 passes no status through). ``python -m hf_isi.launch`` (the same options): only our line,
    exit 2. Before: the line was printed by every process, and no wrapper existed."""
    args = ["--model_name_or_path", "no-such-org/no-such-vit", "--dataset", str(assets["images"]),
            "--output_dir", str(tmp_path / "out")]
    command = launch_command(args, num_processes)
    plain = subprocess.run(command, env=launch_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
                           check=False)
    ours = [line for line in plain.stderr.splitlines() if line.startswith("probe.py: error:")]
    assert plain.returncode == 1 and len(ours) == 1, plain.stderr[-3000:]
    assert ours[0].startswith("probe.py: error: cannot load model 'no-such-org/no-such-vit'")

    wrapped = subprocess.run([sys.executable, "-m", "hf_isi.launch", *command[2:]], env=launch_env(), cwd=ROOT,
                             capture_output=True, text=True, timeout=300, check=False)
    assert wrapped.returncode == 2, wrapped.stderr[-3000:]
    assert error_lines(wrapped.stderr) == ours, wrapped.stderr[-3000:]
    for noise in ("Traceback", "CalledProcessError", "ChildFailedError", "exitcode", "SIGTERM"):
        assert noise not in wrapped.stderr, wrapped.stderr[-3000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.slow
def test_the_launch_wrapper_runs_a_good_job(assets, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    command = launch_command(["--model_name_or_path", assets["models"][0], "--dataset", str(assets["images"]),
                              "--output_dir", str(out), "--max_samples", "12", "--no_plots"], 1)
    result = subprocess.run([sys.executable, "-m", "hf_isi.launch", *command[2:]], env=launch_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["run"]["num_examples"] == 12


# -- what the run summary publishes --------------------------------------------------------------------------
def test_the_run_summary_publishes_no_home_path(assets, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Before: the command line, output_dir, dataset and skipped files carried the absolute local paths."""
    monkeypatch.setenv("HOME", str(tmp_path))
    images = make_imagefolder(tmp_path / "images", per_class=4)  # with its corrupt.png
    (images / "validation" / "cat" / "away.png").symlink_to("/etc/passwd")
    out = tmp_path / "runs" / "out"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--dataset", str(images), f"--output_dir={out}"])
    code, err = run_in_process(["--model_name_or_path", assets["models"][0], "--dataset", str(images),
                                "--output_dir", str(out), "--no_plots"], capsys)
    assert code == 0, err
    run = json.loads((out / "summary.json").read_text())["run"]
    script = os.path.relpath(SCRIPT) if str(SCRIPT).startswith(os.getcwd() + os.sep) else SCRIPT
    assert run["command_line"] == f"{Path(sys.executable).name} {script} --dataset '~/images' '--output_dir=~/runs/out'"
    assert run["arguments"]["run"]["output_dir"] == "~/runs/out"
    assert run["arguments"]["data"]["dataset"] == run["dataset"]["dataset"] == "~/images"
    assert run["skipped_files"] == ["validation/cat/corrupt.png"]
    assert run["num_files_refused"] == 1 and run["refused_files"] == [
        {"file": "validation/cat/away.png", "reason": "is a link to outside the dataset folder"}]
    published = json.dumps({k: run[k] for k in ("command_line", "arguments", "dataset", "skipped_files",
                                                 "refused_files")})
    assert str(tmp_path) not in published


# -- the big-image benchmark runs (its figures are in bench/results/, not asserted here) -------------------------
def test_bench_big_images_smoke(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_big_images

    rows = bench_big_images.main(["--cases", "png13000,jpg13000", "--side", "300", "--repeats", "1",
                                  "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")])
    assert [(r["case"], r["exit_status"], r["images_used"]) for r in rows] == [("png13000", 0, 24),
                                                                               ("jpg13000", 0, 24)]
    assert all(r["peak_rss_mb"] > 0 for r in rows)
    assert (tmp_path / "out" / "big_images-cpu-fp32-tiny.csv").is_file()
