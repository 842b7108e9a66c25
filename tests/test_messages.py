"""One line about an error, and sizes for people: the helpers every message uses."""

import docker.errors
import requests

from fiddledock_magic._errors import EngineUnavailable, ImageBuildError, format_size, short_error


def test_a_fiddledock_error_is_its_own_first_line():
    assert short_error(EngineUnavailable("cannot reach the engine")) == "cannot reach the engine"
    assert short_error(ImageBuildError("debootstrap failed with exit code 1:\nE: no mirror")) \
        == "debootstrap failed with exit code 1:"


def test_a_refusal_is_the_engines_explanation_not_the_url():
    response = requests.Response()
    response.status_code = 404
    refusal = docker.errors.APIError("404 Client Error for http+docker://localhost/v1.41/x",
                                     response, explanation="No such image: nothing:0")
    assert short_error(refusal) == "No such image: nothing:0"


def test_anything_else_names_its_type():
    assert short_error(KeyError("image")) == "KeyError: 'image'"
    assert short_error(ValueError()) == "ValueError"
    assert short_error(OSError("x" * 1000)) == ("OSError: " + "x" * 1000)[:300]


def test_sizes_for_people():
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 4 << 20, 3 << 30)] == [
        "0 bytes", "1023 bytes", "1.0 KiB", "1.5 KiB", "4.0 MiB", "3.0 GiB"]
