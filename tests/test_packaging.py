"""model.tar.gz: written from a real tiny model, unpacked as SageMaker does, and served by the
`code/inference.py` inside it."""
import importlib.util
import io
import json
import os
import shutil
import tarfile

import pytest

from kogpt2_serving.cli import main
from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.files.model_dir import find_model_files
from kogpt2_serving.aws.packaging import ENTRY_POINT, PackagingError, check_archive, package

PROMPT = "아기 공룡 둘리는"


@pytest.fixture(scope="module")
def archive(tiny_model_dir, tmp_path_factory):
    return package(tiny_model_dir, str(tmp_path_factory.mktemp("pkg") / "model.tar.gz"))


def unpack(path, directory):
    """What SageMaker does with ModelDataUrl before starting the container."""
    with tarfile.open(path, "r:gz") as tar:
        tar.extractall(directory)
    return str(directory)


def load_entry_point(model_dir):
    spec = importlib.util.spec_from_file_location("packaged_inference", os.path.join(model_dir, ENTRY_POINT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_is_model_files_at_the_top_and_the_entry_point(archive, tiny_model_dir):
    files = find_model_files(tiny_model_dir)
    model_files = sorted(os.path.basename(p) for p in (files.params, files.spiece, files.config))
    assert archive.members == model_files + [ENTRY_POINT]
    with tarfile.open(archive.path, "r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == archive.members
    assert {(m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, "", "", 0o644)}
    assert check_archive(archive.path) == archive.members
    assert archive.size == os.path.getsize(archive.path)
    assert not os.path.exists(archive.path + ".partial")


def test_unpacked_archive_serves_the_same_model(archive, tiny_model_dir, tmp_path):
    unpacked = unpack(archive.path, tmp_path / "opt-ml-model")
    for name in archive.members[:-1]:
        with open(os.path.join(unpacked, name), "rb") as a, open(os.path.join(tiny_model_dir, name), "rb") as b:
            assert a.read() == b.read(), name
    entry = load_entry_point(unpacked)
    from kogpt2_serving import handler

    assert (entry.model_fn, entry.input_fn, entry.predict_fn, entry.output_fn) == \
        (handler.model_fn, handler.input_fn, handler.predict_fn, handler.output_fn)
    body = json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 5}}, ensure_ascii=False)

    def answer(model_dir):
        model = entry.model_fn(model_dir)
        response, content_type = entry.output_fn(
            entry.predict_fn(entry.input_fn(body, "application/json"), model), "application/json")
        assert content_type == "application/json"
        return json.loads(response)

    from_archive = answer(unpacked)
    assert from_archive[0]["generated_text"].startswith(PROMPT)
    assert from_archive == answer(tiny_model_dir)


def test_extra_files_stay_out(tiny_model_dir, tmp_path):
    source = str(tmp_path / "model")
    shutil.copytree(tiny_model_dir, source)
    os.makedirs(os.path.join(source, "code"))
    with open(os.path.join(source, "code", "inference.py"), "w") as f:
        f.write("raise RuntimeError('old entry point')\n")
    with open(os.path.join(source, "README.md"), "w") as f:
        f.write("notes\n")
    result = package(source, str(tmp_path / "model.tar.gz"), validate=False)
    assert "README.md" not in result.members
    with tarfile.open(result.path, "r:gz") as tar:
        assert "raise RuntimeError" not in tar.extractfile(ENTRY_POINT).read().decode()


def test_model_that_does_not_load_is_not_packaged(tiny_model_dir, tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(tiny_model_dir, broken)
    params = find_model_files(broken).params
    with open(params, "r+b") as f:
        f.truncate(100)
    output = str(tmp_path / "model.tar.gz")
    with pytest.raises(ModelLoadError) as raised:
        package(broken, output)
    assert os.path.basename(params) in raised.value.message
    assert os.listdir(str(tmp_path)) == ["broken"]


def test_directory_with_two_checkpoints_names_them(tiny_model_dir, tmp_path):
    source = str(tmp_path / "model")
    shutil.copytree(tiny_model_dir, source)
    shutil.copy(find_model_files(source).params, os.path.join(source, "other.params"))
    with pytest.raises(ModelLoadError) as raised:
        package(source, str(tmp_path / "model.tar.gz"), validate=False)
    assert "exactly one *.params file, found 2" in raised.value.message
    assert "other.params" in raised.value.message
    assert not os.path.exists(str(tmp_path / "model.tar.gz"))


def test_unwritable_output_names_the_file(tiny_model_dir, tmp_path):
    output = str(tmp_path / "missing-dir" / "model.tar.gz")
    with pytest.raises(PackagingError) as raised:
        package(tiny_model_dir, output, validate=False)
    assert raised.value.message.startswith("cannot write {}: ".format(output))


def write_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_check_archive_refuses_what_the_container_could_not_serve(tmp_path):
    walkthrough = write_tar(str(tmp_path / "a.tar.gz"), {"./mxnet_kogpt2.params": b"x", "./kogpt2.spiece": b"y"})
    with pytest.raises(PackagingError) as raised:
        check_archive(walkthrough)
    assert raised.value.message == ("{} has no code/inference.py: make it with `kogpt2-serving package --model-dir "
                                    "DIR -o a.tar.gz`".format(walkthrough))
    nested = write_tar(str(tmp_path / "b.tar.gz"), {"model/m.params": b"x", ENTRY_POINT: b""})
    with pytest.raises(PackagingError) as raised:
        check_archive(nested)
    assert "has no model weights at its top level" in raised.value.message
    escaping = write_tar(str(tmp_path / "c.tar.gz"), {"../m.params": b"x", ENTRY_POINT: b""})
    with pytest.raises(PackagingError) as raised:
        check_archive(escaping)
    assert raised.value.message.endswith("has members outside the model directory: ../m.params")
    not_tar = str(tmp_path / "d.tar.gz")
    with open(not_tar, "wb") as f:
        f.write(b"plain text")
    with pytest.raises(PackagingError) as raised:
        check_archive(not_tar)
    assert raised.value.message.startswith("{} is not a readable .tar.gz".format(not_tar))


def test_cli(tiny_model_dir, tmp_path, capsys):
    output = str(tmp_path / "model.tar.gz")
    assert main(["package", "--model-dir", tiny_model_dir, "-o", output]) == 0
    out = capsys.readouterr().out
    assert out.startswith("validating: loading {}\n".format(tiny_model_dir))
    assert "  code/inference.py\n" in out
    assert "wrote {} (".format(output) in out
    assert check_archive(output)[-1] == ENTRY_POINT
