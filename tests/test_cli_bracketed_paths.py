"""Paths with square brackets (``photos [2024]``, ``site[v2]``) in what the commands print: rich reads
``[v2]`` as markup and drops it, and ``[/b]`` closes a tag never opened (a MarkupError). Each line
naming such a path shows it whole, without a traceback, within 80 columns."""
import shutil
from pathlib import Path

import pytest
from narrow_terminal import COLUMNS, narrow_runner, unwrapped, widest_line

from edge_retina.bundle.signing import generate_key_pair
from edge_retina.cli.main import cli


@pytest.fixture()
def bracketed(tmp_path) -> Path:
    """A folder whose path holds a tag rich would drop (``[v2]``) and one it would choke on (``[/b]``)."""
    folder = tmp_path / "photos [2024]" / "site[v2]" / "x[/b]"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture()
def bracketed_bundle(tiny_bundle, bracketed) -> Path:
    return Path(shutil.copytree(tiny_bundle, bracketed / "bundle[v2]"))


def invoke(*args):
    result = narrow_runner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert widest_line(result.output) <= COLUMNS, result.output
    return result


def says(result, *phrases) -> bool:
    return all(unwrapped(phrase) in unwrapped(result.output) for phrase in phrases)


def test_screen_names_bracketed_photos_bundle_and_results_whole(bracketed_bundle, bracketed, retina_jpeg):
    good = shutil.copy(retina_jpeg, bracketed / "good [1].jpg")
    broken = bracketed / "broken[b].jpg"
    broken.write_bytes(retina_jpeg.read_bytes()[:5000])
    out = bracketed / "results[v2].csv"
    result = invoke("screen", good, broken, "--bundle", bracketed_bundle, "--out", out)
    assert result.exit_code == 0, result.output
    assert says(result, f"error {broken}: truncated JPEG", f"({bracketed_bundle})",
                f"results written to {out}"), result.output


def test_bundle_inspect_and_verify_of_a_bracketed_bundle(bracketed_bundle):
    inspected = invoke("bundle", "inspect", bracketed_bundle)
    assert inspected.exit_code == 0 and says(inspected, f"{bracketed_bundle} schema v1"), inspected.output
    assert invoke("bundle", "verify", bracketed_bundle).exit_code == 0
    (bracketed_bundle / "prompts.npz").write_bytes(b"altered")
    refused = invoke("bundle", "verify", bracketed_bundle)
    assert refused.exit_code == 1 and says(refused, "problem", "prompts.npz", "bundle REFUSED"), refused.output
    missing = bracketed_bundle.parent / "gone[/b]"
    failed = invoke("bundle", "inspect", missing)
    assert failed.exit_code == 2 and says(failed, "error:", str(missing)), failed.output


def test_install_of_an_unsigned_bracketed_bundle_is_refused_naming_it(bracketed_bundle, bracketed):
    trusted = bracketed / "trusted[keys]"
    trusted.mkdir()
    generate_key_pair(bracketed / "signer.key", trusted / "signer.pub")
    result = invoke("bundle", "install", bracketed_bundle, "--root", bracketed / "root[a]",
                    "--trusted-keys", trusted, "--no-start")
    assert result.exit_code == 2 and says(result, "error:", str(bracketed_bundle), "is not signed"), result.output


def test_keygen_and_sign_name_bracketed_paths_whole(bracketed_bundle, bracketed):
    private, public = bracketed / "signer[v2].key", bracketed / "trusted[keys]" / "x[/b].pub"
    made = invoke("bundle", "keygen", "--private-key", private, "--public-key", public)
    assert made.exit_code == 0 and says(made, f"private {private}, public {public}"), made.output
    signed = invoke("bundle", "sign", bracketed_bundle, "--key", private)
    assert signed.exit_code == 0 and says(signed, f"signed {bracketed_bundle} with key"), signed.output
