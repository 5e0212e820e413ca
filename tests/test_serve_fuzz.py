"""Every route, every field given every kind of wrong value, framing broken every way: never a 500, and the
server still answers after. Structure-aware and seeded: each request is built from the route's own fields
(JSON and multipart), so the cases reach the checks behind the parser, not only the parser."""

from __future__ import annotations

import base64
import json
import random

import httpx
import numpy as np
import pytest
from serve_harness import gallery_service, png

OPTIONS = ("--backend", "onnxruntime", "--precision", "fp32", "--max-batch", "8", "--max-delay-ms", "1")
FACE = png(np.full((112, 96, 3), 120, np.uint8))
DEEP = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000
# Every JSON type and the extremes of each.
VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    1e308,
    -1e308,
    2**63,
    -(2**63) - 1,
    10**400,
    "",
    "x",
    "auto",
    "largest",
    "\u202e",
    "9" * 5000,
    [],
    [None],
    [[]],
    [1, 2, 3],
    [[0.5]],
    {},
    {"a": 1},
]
ROUTES = {
    "/v1/embed": {"images": [FACE], "occlusion": None, "landmarks": None, "min_face": None},
    "/v1/detect": {"image": FACE, "min_face": None},
    "/v1/verify": {"image_a": FACE, "image_b": FACE, "occlusion_a": None, "threshold": None, "face_b": None},
    "/v1/identify": {"image": FACE, "occlusion": None, "k": 1, "threshold": None, "landmarks": None},
    "/v1/identities": {"identity": "fuzz", "images": [FACE], "metadata": None, "replace": False, "face": None},
}


@pytest.fixture(scope="module")
def client(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-fuzz")
    with gallery_service(tiny_bundle, folder, *OPTIONS) as (server, http):
        yield http
        assert http.get("/v2/health/ready").status_code == 200, "the server must still be serving after the fuzz"
        assert "Traceback" not in server.logs()


def _json_body(fields: dict) -> dict:
    return {
        k: (
            [base64.b64encode(v).decode() for v in value]
            if isinstance(value, list) and value and isinstance(value[0], bytes)
            else base64.b64encode(value).decode()
            if isinstance(value, bytes)
            else value
        )
        for k, value in fields.items()
        if value is not None
    }


def _assert_4xx(answer: httpx.Response, what: str) -> None:
    assert answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:300]}"
    if answer.status_code >= 400:
        body = answer.json()
        assert body.get("error"), f"{what}: an error answer without a message: {answer.text[:300]}"


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_field_every_json_value(client, route):
    for field in ROUTES[route]:
        for value in [*VALUES, json.loads(DEEP[:200] + DEEP[-200:])]:
            body = {**_json_body(ROUTES[route]), field: value}
            answer = client.post(route, json=body)
            _assert_4xx(answer, f"{route} JSON {field}={str(value)[:40]}")


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_field_every_form_value(client, route):
    for field in ROUTES[route]:
        for value in [*VALUES, DEEP, DEEP_OBJECT]:
            text = value if isinstance(value, str) else json.dumps(value)
            files, data = [], {}
            for name, other in ROUTES[route].items():
                if name == field:
                    data[name] = text
                elif isinstance(other, bytes):
                    files.append((name, ("face.png", other)))
                elif isinstance(other, list) and other and isinstance(other[0], bytes):
                    files += [(name, ("face.png", item)) for item in other]
                elif other is not None:
                    data[name] = other if isinstance(other, str) else json.dumps(other)
            answer = client.post(route, data=data, files=files or None)
            _assert_4xx(answer, f"{route} form {field}={text[:40]}")


@pytest.mark.parametrize("route", [*ROUTES, "/v2/models/pdsn/infer"])
def test_broken_bodies_and_framing(client, route):
    rng = random.Random(route)
    boundary = "b0undary"
    bodies = [
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n"),  # no boundary parameter
        ({"Content-Type": f"multipart/form-data; boundary={boundary}"}, b"garbage without a boundary"),
        ({"Content-Type": f"multipart/form-data; boundary={boundary}"}, f"--{boundary}\r\nContent-Dispo".encode()),
        (
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            "".join(
                f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n' for i in range(100)
            ).encode()
            + f"--{boundary}--\r\n".encode(),
        ),
        (
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            "".join(
                f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\nx\r\n'
                for _ in range(300)
            ).encode()
            + f"--{boundary}--\r\n".encode(),
        ),
        ({"Content-Type": "application/json"}, DEEP.encode()),
        ({"Content-Type": "application/json"}, DEEP_OBJECT.encode()),
        ({"Content-Type": "application/json"}, b"{"),
        ({"Content-Type": "application/json"}, b"\xff\xfe"),
        ({"Content-Type": "application/json"}, b"[]"),
        ({"Content-Type": "application/json"}, b"null"),
        ({"Content-Type": "text/plain"}, b"hello"),
        ({}, bytes(rng.randrange(256) for _ in range(512))),
    ]
    for headers, body in bodies:
        _assert_4xx(client.post(route, content=body, headers=headers), f"{route} {headers} {body[:30]!r}")


KSERVE_IMAGE = {"name": "image", "datatype": "UINT8", "shape": [1, 112, 96, 3]}


@pytest.mark.parametrize(
    ("header_length", "header", "binary"),
    [
        ("١٢", None, b""),  # a Unicode digit
        ("-1", None, b""),
        ("99999999999999999999", None, b""),
        (None, {"inputs": [{**KSERVE_IMAGE, "parameters": {"binary_data_size": 32256.0}}]}, bytes(32256)),
        (None, {"inputs": [{**KSERVE_IMAGE, "parameters": {"binary_data_size": -5}}]}, bytes(32256)),
        (None, {"inputs": [{**KSERVE_IMAGE, "parameters": {"binary_data_size": True}}]}, bytes(32256)),
        (None, {"inputs": [{**KSERVE_IMAGE, "parameters": {"binary_data_size": 2**70}}]}, bytes(32256)),
        (None, {"inputs": [{**KSERVE_IMAGE, "datatype": "BOOL", "data": [True] * 32256}]}, b""),
        (None, {"inputs": [{**KSERVE_IMAGE, "shape": [1, 112, 96, 2**62]}]}, b""),
        (None, {"inputs": [{**KSERVE_IMAGE, "shape": [-1, 112, 96, 3], "data": [0]}]}, b""),
        (None, {"inputs": [{**KSERVE_IMAGE, "data": json.loads("[" * 800 + "]" * 800)}]}, b""),
        (None, {"inputs": "x"}, b""),
        (None, {"inputs": [None]}, b""),
        (None, {"parameters": {"timeout": "x"}, "inputs": []}, b""),
        (None, {"outputs": [{"name": None}], "inputs": []}, b""),
    ],
)
def test_kserve_framing(client, header_length, header, binary):
    text = json.dumps(header).encode() if header is not None else b'{"inputs": []}'
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None or binary:
        headers["Inference-Header-Content-Length"] = (header_length or str(len(text))).encode()  # raw: any digits
    _assert_4xx(client.post("/v2/models/pdsn/infer", content=text + binary, headers=headers), f"infer {text[:80]!r}")


@pytest.mark.parametrize(
    "query",
    ["offset=9223372036854775808", "offset=-1", "limit=0", "limit=10000", "offset=1e3", "limit=x", "offset=١"],
)
def test_identity_listing_queries(client, query):
    _assert_4xx(client.get(f"/v1/identities?{query}"), query)


@pytest.mark.parametrize("name", ["%00", "a" * 5000, "%E2%80%AE", "..%2F..%2Fetc", "%FF"])
def test_identity_paths(client, name):
    for method in ("GET", "DELETE"):
        _assert_4xx(client.request(method, f"/v1/identities/{name}"), f"{method} {name}")


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("/v1/verify", "threshold", True),
        ("/v1/identify", "threshold", False),
        ("/v1/identities", "replace", "yes"),
        ("/v1/identities", "replace", 1),
        ("/v1/identify", "k", True),
        ("/v1/identify", "k", 2.0),
        ("/v1/embed", "min_face", "40"),
    ],
)
def test_no_loose_coercion(client, route, field, value):
    """A boolean is not a number, a string is not a boolean: 422 naming the field, as everywhere else."""
    answer = client.post(route, json={**_json_body(ROUTES[route]), field: value})
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_booleans_are_no_numbers_in_kserve_json(client, datatype):
    shape = [1, 112, 96, 3] if datatype == "UINT8" else [1, 25]
    name = "image" if datatype == "UINT8" else "occlusion"
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": [True] * int(np.prod(shape))}
    inputs = (
        [tensor]
        if name == "image"
        else [{"name": "image", "datatype": "UINT8", "shape": [1, 112, 96, 3], "data": [0] * 32256}, tensor]
    )
    answer = client.post("/v2/models/pdsn/infer", json={"inputs": inputs})
    assert answer.status_code == 400 and answer.json()["field"] == name and "got bool values" in answer.json()["error"]
