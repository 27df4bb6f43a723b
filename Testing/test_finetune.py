"""Local fine-tuning: data folders and their checks, splits by patient, the one training loop's new duties, the
engine, atomic publishing, export/import/delete, and an end-to-end fine-tune of a tiny model through the CLI
(the GUI's code path: ``finetune.engine.finetune`` + ``finetune.publish.publish``)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from MedSegAILib.core.io import write_volume
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError, ModelError
from MedSegAILib.finetune.data import Case, discover_cases, kfold_by_patient, read_cases, split_by_patient

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread."""


def _spect(seed: int, shape: int = 40):
    from MedSegAILib.simulate.spect import simulate_spect

    img, lab, _ = simulate_spect(seed, spacing=6.0, shape=shape, fov="tight", oblique=False)
    return img, lab


@pytest.fixture(scope="module")
def spect_cases():
    return [_spect(910_000 + i) for i in range(3)]


def _write_folder(root: Path, cases, mask_name="mask.nii.gz", patients=None) -> Path:
    for i, (img, lab) in enumerate(cases):
        d = root / f"case{i}"
        d.mkdir(parents=True)
        write_volume(img, d / "image.nii.gz")
        write_volume(lab, d / mask_name)
    if patients:
        (root / "patients.csv").write_text("case,patient\n" + "".join(f"case{i},{p}\n" for i, p in
                                                                       enumerate(patients)))
    return root


@pytest.fixture()
def tiny_model(tiny_mpi_model):
    return tiny_mpi_model


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------------- data
def test_folder_layouts_are_discovered(tmp_path, spect_cases):
    root = _write_folder(tmp_path / "a", spect_cases[:2])
    files = discover_cases(root, ["image"])
    assert [f.name for f in files] == ["case0", "case1"]
    assert files[0].mask.name == "mask.nii.gz" and files[0].inputs["image"].name == "image.nii.gz"
    nn = tmp_path / "nn"
    (nn / "imagesTr").mkdir(parents=True)
    (nn / "labelsTr").mkdir()
    img, lab = spect_cases[0]
    write_volume(img, nn / "imagesTr" / "s1_0000.nii.gz")
    write_volume(lab, nn / "labelsTr" / "s1.nii.gz")
    files = discover_cases(nn, ["image"])
    assert files[0].name == "s1" and files[0].inputs["image"].name == "s1_0000.nii.gz"
    (tmp_path / "bad" / "c").mkdir(parents=True)
    write_volume(img, tmp_path / "bad" / "c" / "image.nii.gz")
    with pytest.raises(InputError, match="no mask"):
        discover_cases(tmp_path / "bad", ["image"])


def test_optional_inputs_are_taken_where_present_and_never_required(tmp_path):
    v = Volume(np.ones((1, 8, 8), np.float32))
    for case, names in (("a", ("sestamibi", "iodine", "sestamibi_late", "mask")), ("b", ("sestamibi", "iodine",
                                                                                        "mask"))):
        (tmp_path / case).mkdir()
        for n in names:
            write_volume(v, tmp_path / case / f"{n}.nii.gz")
    files = discover_cases(tmp_path, ["sestamibi", "iodine"], ["sestamibi_late"])
    assert [sorted(f.inputs) for f in files] == [["iodine", "sestamibi", "sestamibi_late"], ["iodine", "sestamibi"]]
    (tmp_path / "b" / "iodine.nii.gz").unlink()
    with pytest.raises(InputError, match="b: no image for input.s. iodine"):
        discover_cases(tmp_path, ["sestamibi", "iodine"], ["sestamibi_late"])


def test_cases_are_read_with_patients_and_exact_geometry(tmp_path, spect_cases):
    root = _write_folder(tmp_path / "d", spect_cases, patients=["A", "A", "B"])
    cases = read_cases("mpi-myocardium", root)
    assert [c.patient for c in cases] == ["A", "A", "B"]
    img, lab = spect_cases[0]
    assert cases[0].labels.same_geometry(img, 1e-4)
    assert np.array_equal(cases[0].labels.array, lab.array)


def test_unknown_labels_empty_masks_and_foreign_grids(tmp_path, spect_cases):
    img, lab = spect_cases[0]
    bad = lab.with_array(np.where(lab.array == 2, 7, lab.array).astype(np.uint8))
    _write_folder(tmp_path / "u", [(img, bad)])
    with pytest.raises(InputError, match=r"label value\(s\) \[7\].*1 = Left ventricle myocardium"):
        read_cases("mpi-myocardium", tmp_path / "u")
    _write_folder(tmp_path / "e", [(img, lab.with_array(np.zeros_like(lab.array)))])
    with pytest.raises(InputError, match="mask is empty"):
        read_cases("mpi-myocardium", tmp_path / "e")
    # the same mask on a 2x finer grid: resampled onto the image grid, with a note; identical labels
    from MedSegAILib.core.resample import resample_volume

    fine = resample_volume(lab, spacing=[s / 2 for s in lab.spacing], interpolation="nearest")
    _write_folder(tmp_path / "g", [(img, fine)])
    case = read_cases("mpi-myocardium", tmp_path / "g")[0]
    assert case.labels.same_geometry(img, 1e-4)
    assert any("resampled" in n for n in case.notes)
    from MedSegAILib.metrics import dice

    assert dice(case.labels.array == 1, lab.array == 1) > 0.9
    with pytest.raises(InputError, match="grid"):
        read_cases("mpi-myocardium", tmp_path / "g", strict_grid=True)
    far = Volume(lab.array, lab.spacing, tuple(np.asarray(lab.origin) + 1000.0), lab.direction)
    _write_folder(tmp_path / "f", [(img, far)])
    with pytest.raises(InputError, match="covers only 0%"):
        read_cases("mpi-myocardium", tmp_path / "f")


def _case(name, patient):
    v = Volume(np.ones((2, 2, 2), np.uint8))
    return Case(name, patient, {"image": v}, v)


def test_splits_are_by_patient():
    cases = [_case(f"c{i}", f"p{i // 2}") for i in range(10)]  # 5 patients, 2 cases each
    tr, va = split_by_patient(cases, 0.2, seed=3)
    assert {c.patient for c in tr}.isdisjoint({c.patient for c in va}) and len(va) == 2
    folds = kfold_by_patient(cases, 5)
    seen = [c.name for _, va in folds for c in va]
    assert sorted(seen) == sorted(c.name for c in cases)
    for tr, va in folds:
        assert {c.patient for c in tr}.isdisjoint({c.patient for c in va})
    with pytest.raises(InputError, match="leaves no patient to train on"):
        split_by_patient([_case("only", "p")], 0.2)
    tr, va = split_by_patient([_case("only", "p")], 0.0)
    assert len(tr) == 1 and va == []
    with pytest.raises(InputError, match="at least 10 patients"):
        kfold_by_patient(cases, 10)


# ---------------------------------------------------------------------------------------------- loop
def test_loop_early_stops_reports_epochs_and_returns_on_cancel():
    from MedSegAILib.engine.progress import CancelToken
    from MedSegAILib.train.loop import train

    net = torch.nn.Linear(2, 1)
    data = [(torch.ones(4, 2), torch.zeros(4, 1))]
    seen = []
    res = train(net, data, torch.nn.functional.mse_loss, torch.optim.SGD(net.parameters(), lr=0.0),
                val_metric=lambda m: 0.5, epochs=50, patience=3, on_epoch=seen.append)
    assert res.stopped_by == "early stop" and len(res.history) == 4 and len(seen) == 4
    assert res.best_epoch == 0
    token = CancelToken()
    token.cancel()
    res = train(net, data, torch.nn.functional.mse_loss, torch.optim.SGD(net.parameters(), lr=0.1),
                epochs=5, cancel=token, return_on_cancel=True)
    assert res.stopped_by == "cancel" and res.best_state is None
    with pytest.raises(Exception, match="ancel"):
        train(net, data, torch.nn.functional.mse_loss, torch.optim.SGD(net.parameters(), lr=0.1), epochs=5,
              cancel=token)


def test_out_of_memory_falls_back_to_smaller_batches_then_cpu():
    from MedSegAILib.finetune.engine import _with_fallback

    calls = []

    def run(device, batch):
        calls.append((device.type, batch))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    messages = []
    out, device, batch = _with_fallback(run, torch.device("cuda"), 4, messages, lambda s: None)
    assert out == "done" and device.type == "cpu" and batch == 1
    assert calls == [("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert "batch 2" in messages[0] and "CPU" in messages[-1]
    with pytest.raises(ValueError):
        _with_fallback(lambda d, b: (_ for _ in ()).throw(ValueError("other")), torch.device("cuda"), 2, [],
                       lambda s: None)


# ---------------------------------------------------------------------------------------------- end to end
def test_cli_finetune_writes_a_new_version_that_loads_and_leaves_the_base_unchanged(tmp_path, spect_cases,
                                                                                     tiny_model):
    from MedSegAILib.cli import main
    from MedSegAILib.pipeline import segment
    from MedSegAILib.zoo.registry import get_model_spec, load_model, user_models

    base = get_model_spec("tiny-mpi")
    before = _digest(base.folder)
    bundled = get_model_spec("mpi-myocardium-unet3d")
    bundled_before = _digest(bundled.networks["segmenter"].weights.parent)
    data = _write_folder(tmp_path / "data", spect_cases)
    rc = main(["finetune", "--task", "mpi-myocardium", "--model", "tiny-mpi", "--data", str(data), "--epochs", "2",
               "--val-share", "0.34", "--keep-if-worse", "--name", "mine", "--device", "cpu", "-q"])
    assert rc == 0
    specs = [s for s in user_models()[0] if s.id == "tiny-mpi-mine"]
    assert len(specs) == 1
    new = specs[0]
    assert new.base_model == "tiny-mpi@1.0.0" and new.version == "1.0.0" and new.created
    m = new.metrics["finetune"]
    assert m["n_cases"] == 3 and m["n_val"] == 1 and m["epochs"] == 2
    assert 0.0 <= m["validation_dice_before"] <= 1.0 and 0.0 <= m["validation_dice_after"] <= 1.0
    for f in ("card.md", "training-curves.png", "history.json"):
        assert (new.folder / f).is_file()
    assert (new.folder / "training-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny-mpi@1.0.0" in (new.folder / "card.md").read_text()
    loaded = load_model(new)  # checksums verified
    old = load_model(base)
    assert not all(torch.equal(a, loaded.networks["segmenter"].state_dict()[k])
                   for k, a in old.networks["segmenter"].state_dict().items())
    assert all(torch.equal(a, loaded.networks["localizer"].state_dict()[k])
               for k, a in old.networks["localizer"].state_dict().items())
    assert _digest(base.folder) == before  # the base model is never modified
    assert _digest(bundled.networks["segmenter"].weights.parent) == bundled_before
    img, _ = spect_cases[0]
    res = segment("mpi-myocardium", {"image": img}, model_id=new.key, device="cpu")
    assert "tiny-mpi-mine" in json.dumps(res.provenance)
    assert res.labelmap.same_geometry(img, 1e-4)
    # a second fine-tune with the same name is the next version, never an overwrite
    rc = main(["finetune", "--task", "mpi-myocardium", "--model", "tiny-mpi", "--data", str(data), "--epochs", "1",
               "--val-share", "0", "--name", "mine", "--device", "cpu", "-q"])
    assert rc == 0
    assert sorted(s.version for s in user_models()[0] if s.id == "tiny-mpi-mine") == ["1.0.0", "1.1.0"]


def _run(spect_cases, **kw):
    from MedSegAILib.finetune.engine import FinetuneOptions, finetune

    cases = [Case(f"c{i}", f"p{i}", {"image": img}, lab) for i, (img, lab) in enumerate(spect_cases)]
    opts = FinetuneOptions(**{"epochs": 1, "val_share": 0.34, "steps_per_epoch": 1, "device": "cpu", **kw})
    return finetune("mpi-myocardium", cases, model="tiny-mpi", options=opts)


def test_publish_is_atomic_on_a_full_disk_and_refuses_unimproved_runs(spect_cases, tiny_model, monkeypatch):
    import safetensors.torch

    from MedSegAILib.finetune.publish import publish

    run = _run(spect_cases)
    assert run.state is not None and run.n_val == 1
    run.dice_before, run.dice_after = 0.8, 0.7
    with pytest.raises(ModelError, match="did not improve"):
        publish(run, "worse")
    listing = sorted(p.name for p in tiny_model.iterdir())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ModelError, match="Not enough disk space"):
        publish(run, "full", keep_if_worse=True)
    assert sorted(p.name for p in tiny_model.iterdir()) == listing  # no staging folder, no half model


def test_export_import_delete_round_trip(spect_cases, tiny_model, tmp_path, monkeypatch):
    from MedSegAILib.finetune.publish import delete_model, export_model, import_model, publish
    from MedSegAILib.zoo.registry import get_model_spec, user_models

    spec = publish(_run(spect_cases, val_share=0.0), "x")
    assert spec.key == "tiny-mpi-x@1.0.0"
    zip_path = export_model(spec.key, tmp_path)
    assert zip_path.name.endswith(".medsegai-model.zip")
    with pytest.raises(ModelError, match="already installed"):
        import_model(zip_path)
    delete_model(spec.key)
    assert not any(s.id == "tiny-mpi-x" for s in user_models()[0])
    back = import_model(zip_path)
    assert back.key == spec.key and get_model_spec(spec.key).folder == back.folder
    with pytest.raises(ModelError, match="bundled"):
        delete_model("mpi-myocardium-unet3d")
    corrupt = tmp_path / "c.medsegai-model.zip"
    corrupt.write_bytes(zip_path.read_bytes()[:200])
    with pytest.raises(ModelError):
        import_model(corrupt)
    assert not [p for p in Path(os.environ["MEDSEGAI_MODEL_DIR"]).iterdir() if p.name.startswith(".")]


def test_tasks_without_training_refuse_clearly():
    from MedSegAILib.tasks.base import Task

    class Dummy(Task):
        id, title, description, inputs = "dummy", "Dummy", "", ()

        def run(self, inputs, params, model, ctx):  # noqa: ANN001
            raise NotImplementedError

    with pytest.raises(ModelError, match="does not support local training"):
        Dummy().training_adapter(None)


def test_foreground_biased_crops_contain_the_structure():
    from MedSegAILib.finetune.adapter import crop_or_pad

    x = np.zeros((1, 40, 80, 80), np.float32)
    y = np.zeros((40, 80, 80), np.int64)
    y[30:32, 70:72, 3:5] = 1
    rng = np.random.default_rng(0)
    hits = [crop_or_pad(x, y, (16, 16, 16), rng, around=(31, 70, 4))[1].any() for _ in range(50)]
    assert all(hits)
    blind = [crop_or_pad(x, y, (16, 16, 16), rng)[1].any() for _ in range(50)]
    assert sum(blind) < 25


def test_kfold_from_scratch_reports_every_fold_and_trains_a_final_model(spect_cases, tiny_model):
    from MedSegAILib.finetune.publish import publish

    run = _run(spect_cases, folds=3, from_scratch=True, epochs=2)
    assert [f["fold"] for f in run.folds] == [1, 2, 3]
    assert all(f["n_val"] == 1 and f["n_train"] == 2 for f in run.folds)
    assert run.dice_before is not None and run.n_train == 3 and run.n_val == 0
    assert run.state is not None and 1 <= len(run.history) <= 2  # final model: median best epoch of the folds
    spec = publish(run, keep_if_worse=True)
    assert spec.id == "mpi-myocardium-trained" and spec.base_model == "tiny-mpi@1.0.0"
    card = spec.card.read_text()
    assert "Trained from scratch" in card and "fold 3" in card
