"""Creating a repository when several processes race, and a config that cannot be
swapped for a weaker one (encryption downgrade) without the client noticing."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from repo_helpers import CHUNK, FAST_KDF, PASSPHRASE, make_disk, read_back, vm, write_point

from repository import Repository, RepositoryError, verify
from repository.errors import ConfigTamperedError, RepositoryExistsError

ROUNDS = 15


def _racer(path: str, passphrase: str | None, barrier, out) -> None:  # type: ignore[no-untyped-def]
    try:
        barrier.wait(10)
        repo = Repository.init(path, chunk_size=CHUNK, passphrase=passphrase, kdf=FAST_KDF)
        out.put(("ok", repo.keys.id_key.hex()))
    except RepositoryError as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))
    except BaseException as exc:  # anything else is a bug: report it, do not hang the test
        out.put(("crash", repr(exc)))


def _race(path: Path, passphrases: list[str | None]) -> list[tuple[str, str]]:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(len(passphrases)), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(path), p, barrier, out)) for p in passphrases]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    return results


def test_concurrent_init_gives_every_process_the_same_working_repository(
    tmp_path: Path,
) -> None:
    for n in range(ROUNDS):
        path = tmp_path / f"repo{n}"
        results = _race(path, [PASSPHRASE, PASSPHRASE])
        assert [r[0] for r in results] == ["ok", "ok"], results
        opened = Repository.open(path, PASSPHRASE)
        # Every racer holds the key of the repository that actually exists...
        assert {r[1] for r in results} == {opened.keys.id_key.hex()}
        # ...and the loser's key slot is gone: one slot, the winner's.
        assert len(list((path / "keys").iterdir())) == 1
    p = write_point(opened, vm(), {"d": make_disk(2 * CHUNK, 1)})
    assert read_back(Repository.open(path, PASSPHRASE), p, "d") == make_disk(2 * CHUNK, 1)
    assert verify(opened, read_data=True).ok


def test_concurrent_init_with_another_passphrase_fails_clearly(tmp_path: Path) -> None:
    for n in range(5):
        path = tmp_path / f"repo{n}"
        results = sorted(_race(path, [PASSPHRASE, "another passphrase"]))
        kinds = [r[0] for r in results]
        assert kinds == ["error", "ok"], results
        assert "RepositoryExistsError" in results[0][1] and str(path) in results[0][1]
        # Whoever won, its passphrase opens the repository and no stray slot remains.
        assert len(list((path / "keys").iterdir())) == 1


def test_init_on_an_initialised_repository_opens_it(repo: Repository) -> None:
    again = Repository.init(repo.root, chunk_size=CHUNK, passphrase=PASSPHRASE, kdf=FAST_KDF)
    assert again.keys == repo.keys and again.config == repo.config
    with pytest.raises(RepositoryExistsError, match=str(repo.root)):
        Repository.init(repo.root, chunk_size=CHUNK, passphrase="nope", kdf=FAST_KDF)
    with pytest.raises(RepositoryExistsError, match="encrypted"):
        Repository.init(repo.root, chunk_size=CHUNK, passphrase=None)
    assert len(list((repo.root / "keys").iterdir())) == 1


def test_init_refuses_a_directory_holding_other_files(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(RepositoryExistsError, match=r"notes\.txt"):
        Repository.init(tmp_path / "r", passphrase=PASSPHRASE, kdf=FAST_KDF)


def _config(repo: Repository) -> dict:
    return json.loads((repo.root / "config").read_bytes())


def _write_config(repo: Repository, d: dict) -> None:
    (repo.root / "config").write_text(json.dumps(d))


def test_unencrypted_config_is_refused_when_a_passphrase_is_set(repo: Repository) -> None:
    write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    d = _config(repo)
    d["encryption"], d["id_key"] = "none", "00" * 32
    _write_config(repo, d)
    with pytest.raises(ConfigTamperedError, match=str(repo.root)) as err:
        Repository.open(repo.root, PASSPHRASE)
    assert "unencrypted" in str(err.value)
    # Even without a passphrase: key slots betray an encrypted repository.
    with pytest.raises(ConfigTamperedError, match="key slot"):
        Repository.open(repo.root, None)


def test_a_passphrase_on_a_genuinely_unencrypted_repository_is_refused(tmp_path: Path) -> None:
    plain = Repository.init(tmp_path / "plain", chunk_size=CHUNK, passphrase=None)
    with pytest.raises(ConfigTamperedError, match="unencrypted"):
        Repository.open(plain.root, PASSPHRASE)
    assert Repository.open(plain.root, None).config == plain.config


@pytest.mark.parametrize(("field", "value"), [("chunk_size", 2 * CHUNK), ("repo_id", "ab" * 16)])
def test_an_edited_config_is_detected(repo: Repository, field: str, value: object) -> None:
    d = _config(repo)
    d[field] = value
    _write_config(repo, d)
    with pytest.raises(RepositoryError, match=str(repo.root)):
        Repository.open(repo.root, PASSPHRASE)


def test_config_check_survives_a_passphrase_change(repo: Repository) -> None:
    repo.change_passphrase("new one", FAST_KDF)
    assert Repository.open(repo.root, "new one").config == repo.config
    d = _config(repo)
    d["chunk_size"] = 2 * CHUNK
    _write_config(repo, d)
    with pytest.raises(ConfigTamperedError, match="config"):
        Repository.open(repo.root, "new one")
