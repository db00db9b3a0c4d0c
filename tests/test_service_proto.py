"""The generated gRPC code matches protos/persona/v1/persona.proto; messages <-> requests; path confinement."""
from __future__ import annotations

import os

import pytest

from persona.errors import PersonaError

pytest.importorskip("grpc")


def test_generated_code_matches_the_proto(tmp_path):
    from google.protobuf import descriptor_pb2

    from persona.service import proto

    pb2, pb2_grpc = proto.modules()
    desc = tmp_path / "persona.desc"
    proto.compile_proto(tmp_path / "gen", descriptor_set=desc)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(desc.read_bytes()).file
    fresh = [f for f in fresh if f.name == proto.PROTO]
    assert len(fresh) == 1
    loaded = descriptor_pb2.FileDescriptorProto()
    pb2.DESCRIPTOR.CopyToProto(loaded)
    for m in fresh[0].message_type:  # protoc records the derived json names; CopyToProto leaves them out
        for f in m.field:
            f.ClearField("json_name")
    for m in loaded.message_type:
        for f in m.field:
            f.ClearField("json_name")
    assert loaded.SerializeToString(deterministic=True) == fresh[0].SerializeToString(deterministic=True)
    # the stubs and servicer have every method of the service
    methods = [m.name for m in fresh[0].service[0].method]
    assert methods == ["Submit", "Watch", "Get", "Cancel", "List", "ClusterStatus"]
    for m in methods:
        assert hasattr(pb2_grpc.PersonaServicer, m)
    stub_src = (tmp_path / "gen" / "persona" / "v1" / "persona_pb2_grpc.py").read_text()
    for m in methods:
        assert f"/persona.v1.Persona/{m}" in stub_src


def test_generated_code_is_rebuilt_when_the_proto_changes(tmp_path, monkeypatch):
    from persona.service import proto

    root = tmp_path / "protos"
    (root / "persona" / "v1").mkdir(parents=True)
    text = (proto.protos_root() / proto.PROTO).read_text()
    (root / proto.PROTO).write_text(text)
    monkeypatch.setenv("PERSONA_PROTOS", str(root))
    monkeypatch.setenv("PERSONA_PROTO_CACHE", str(tmp_path / "cache"))
    first = proto._generated_dir()
    (root / proto.PROTO).write_text(text + "\n// changed\n")
    second = proto._generated_dir()
    assert first != second and (second / "persona" / "v1" / "persona_pb2.py").is_file()


@pytest.mark.parametrize("request_dict", [
    {"kind": "import", "inputs": ["/d/a_R1.fq.gz", "/d/a_R2.fq.gz"], "output": "/d/agd", "chunk_size": 5000,
     "read_group": {"ID": "r1", "SM": "s"}},
    {"kind": "align", "dataset": "/d/agd", "reference": "ref", "secondary": 2, "work_item_reads": 5000,
     "replicas": {"align": 2}, "options": {"k": 15}, "paired": None},
    {"kind": "export", "dataset": "/d/agd", "output": "/d/out.bam", "level": 1, "secondary": False},
    {"kind": "sort", "dataset": "/d/agd", "order": "queryname", "merge_memory": 1 << 30},
    {"kind": "markdup", "dataset": "/d/agd", "metrics": "/d/m.txt"},
    {"kind": "stats", "dataset": "/d/agd"},
])
def test_requests_round_trip_through_messages(request_dict):
    from persona.apps.job import request_from_dict
    from persona.service.convert import step_to_message, step_to_request

    request = request_from_dict(request_dict)
    msg = step_to_message(request)
    back = step_to_request(type(msg).FromString(msg.SerializeToString()))
    assert back == request and back.to_dict() == request.to_dict()
    for k, v in request_dict.items():
        assert type(getattr(back, k)) is type(getattr(request, k)), k


def test_unknown_kinds_and_fields_are_refused():
    from persona.service.convert import step_to_dict, to_struct
    from persona.service.proto import modules

    pb2 = modules()[0]
    with pytest.raises(PersonaError, match="unknown request kind"):
        step_to_dict(pb2.Step(kind="nope", params=to_struct({})))
    with pytest.raises(PersonaError, match="unknown fields"):
        step_to_dict(pb2.Step(kind="stats", params=to_struct({"dataset": "/x", "bogus": 1})))


def test_status_round_trip():
    from persona.service.convert import status_from_message, status_to_message

    row = {"id": "abc", "state": "running", "label": "l", "steps": [{"kind": "stats", "dataset": "/x", "name": None}],
           "step": 0, "feeds_done": 3, "records_done": 300, "records_total_done": 300, "rate": 12.5, "error": "",
           "summaries": [{"records": 5, "kind": "stats"}], "submitted_at": 1.0, "started_at": 2.0, "finished_at": 0.0,
           "attempts": 1, "cancel_requested": False}
    back = status_from_message(status_to_message(row))
    assert back == row


def test_paths_are_confined(tmp_path):
    from persona.service.paths import PathNotAllowed, Roots

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "escape")
    roots = Roots([str(root), "memory://scratch"])
    assert roots.confine("sub/x") == str(root / "sub" / "x")
    assert roots.confine(str(root / "sub")) == str(root / "sub")
    assert roots.confine(f"file://{root}/a") == f"file://{root}/a"
    assert roots.confine("memory://scratch/ds") == "memory://scratch/ds"
    for bad in ("../x", f"{root}/sub/../../outside", str(outside), "/etc/passwd", "escape/x", "-",
                "memory://other/ds", "s3://bucket/x", f"file://{outside}", "~/x"):
        with pytest.raises(PathNotAllowed):
            roots.confine(bad)
    d = roots.confine_request({"kind": "import", "inputs": ["a.fq", "b.fq"], "output": "agd"})
    assert d["inputs"] == [str(root / "a.fq"), str(root / "b.fq")] and d["output"] == str(root / "agd")
    with pytest.raises(PathNotAllowed):
        roots.confine_request({"kind": "align", "dataset": "agd", "reference": "/etc/ref.fa"})
    assert roots.confine_request({"kind": "align", "dataset": "agd", "reference": "sacCer3"})["reference"] == "sacCer3"
