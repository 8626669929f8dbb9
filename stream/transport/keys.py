"""CurveZMQ keys for tcp endpoints (``CurveConfig``); the ``keys`` command writes and lists them.

A key directory holds ZeroMQ certificate files as ``zmq.auth.create_certificates`` writes them:
``NAME.key`` (public key, safe to copy) and ``NAME.key_secret`` (public + secret key, mode 0600,
never copied). One directory serves one machine (or one user):

* its own identity: the one ``NAME.key_secret`` in it (``--curve-name`` picks one if there are several);
* the clients its publishers accept: every ``*.key`` in it (its own public key included, so the
  stages of one machine accept each other); authorise a remote client by copying its ``NAME.key``
  here. The list is read when a publisher opens its socket: restart the stage after a change;
* the publisher its subscribers connect to: ``SERVER.key`` in it (``--curve-server SERVER``,
  default: its own name, i.e. a publisher on the same machine).

Commands::

    spikeformer-live keys generate DIR [--name NAME]    write DIR/NAME.key and DIR/NAME.key_secret
    spikeformer-live keys list DIR [--json]             public keys and file paths in DIR

Stages take ``--curve-keys DIR [--curve-name NAME] [--curve-server NAME]``
(``add_curve_arguments`` / ``curve_from_args``); with it, every tcp endpoint they bind or connect
uses CurveZMQ (encryption, integrity, client authentication). ipc and inproc endpoints stay
plaintext: the file system's permissions protect them.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
Z85_KEY = re.compile(rb"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


class CurveKeyError(ValueError):
    """A key file or key directory is missing, malformed or unsafe."""


def _check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or name.endswith(PUBLIC_SUFFIX):
        raise CurveKeyError(f"key name must be 1-64 letters, digits, '_', '.', '-' (not starting with them), got {name!r}")
    return name


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """``(public, secret)`` z85 keys of a certificate file; CurveKeyError if it is not one."""
    if not path.is_file():
        raise CurveKeyError(f"{path}: no such key file")
    if secret:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CurveKeyError(f"{path}: secret key file is readable by others (mode {mode:o}); run chmod 600 {path}")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise CurveKeyError(f"{path}: not a ZeroMQ certificate ({error})") from None
    for what, key in (("public", public), ("secret", secret_key)):
        if key is not None and not Z85_KEY.fullmatch(key):
            raise CurveKeyError(f"{path}: {what} key is not 40 Z85 characters")
    if secret and secret_key is None:
        raise CurveKeyError(f"{path}: holds no secret key")
    return public, secret_key


def public_key(path: str | os.PathLike) -> str:
    """The Z85 public key of a key file (``NAME.key`` or ``NAME.key_secret``); CurveKeyError if it is not one."""
    return _load(Path(path), secret=False)[0].decode()


def generate_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` (mode 0600); refuse to overwrite either.

    The directory is created (mode 0700) if needed. Returns (public file, secret file).
    """
    directory = Path(directory)
    _check_name(name)
    if directory.exists() and not directory.is_dir():
        raise CurveKeyError(f"{directory} is not a directory")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public_path, secret_path):
        if path.exists():
            raise CurveKeyError(f"{path} exists; remove it first or choose another --name")
    # Create the secret file 0600 before anything is written into it: create_certificates opens it
    # for writing, which keeps the mode of an existing file.
    os.close(os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        zmq.auth.create_certificates(directory, name)  # writes exactly these two paths
        os.chmod(secret_path, 0o600)
    except BaseException:
        secret_path.unlink(missing_ok=True)
        public_path.unlink(missing_ok=True)
        raise
    return public_path, secret_path


def list_keys(directory: str | os.PathLike) -> list[dict]:
    """Every certificate in ``directory``: name, public key (Z85), file, whether it is a secret file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CurveKeyError(f"{directory}: no such key directory")
    rows = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in (PUBLIC_SUFFIX, SECRET_SUFFIX) or not path.is_file():
            continue
        secret = path.suffix == SECRET_SUFFIX
        try:
            public, _ = _load(path, secret=secret)
            problem = ""
        except CurveKeyError as error:
            public, problem = b"", str(error)
        rows.append({"name": path.stem, "public_key": public.decode(), "file": str(path), "secret": secret,
                     "problem": problem})  # fmt: skip
    return rows


@dataclass(frozen=True)
class CurveConfig:
    """CurveZMQ keys of one stage (Z85 text keys, as in the certificate files).

    A publisher is the CurveZMQ server: it uses ``public_key``/``secret_key`` and accepts only
    clients whose public key is in ``authorized``. A subscriber is the client: it uses its own
    keys and ``server_key`` (the publisher's public key). Only tcp endpoints use it.

    Build it with ``CurveConfig.from_directory(DIR)`` or ``curve_from_args(args)``.
    """

    public_key: bytes
    secret_key: bytes
    server_key: bytes | None
    authorized: frozenset[bytes]
    name: str = ""

    def __repr__(self) -> str:  # never print the secret key
        return f"CurveConfig(name={self.name!r}, public_key={self.public_key!r}, {len(self.authorized)} authorised keys)"

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, name: str | None = None,
                       server: str | None = None) -> "CurveConfig":  # fmt: skip
        """Keys from a key directory (see the module docstring).

        Args:
            directory: the key directory.
            name: which ``NAME.key_secret`` is this stage's identity (default: the only one there).
            server: the publisher's key name, ``DIR/SERVER.key`` (default: ``name``).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise CurveKeyError(f"{directory}: no such key directory (create one with python -m stream keys generate)")
        if name is None:
            secrets = sorted(path.stem for path in directory.glob(f"*{SECRET_SUFFIX}"))
            if len(secrets) != 1:
                raise CurveKeyError(
                    f"{directory} holds {len(secrets)} secret keys {secrets}; choose one with --curve-name"
                )
            name = secrets[0]
        public, secret = _load(directory / f"{_check_name(name)}{SECRET_SUFFIX}", secret=True)
        server_name = _check_name(server or name)
        server_key = public if server_name == name else _load(directory / f"{server_name}{PUBLIC_SUFFIX}", secret=False)[0]
        authorized = {public}
        for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
            authorized.add(_load(path, secret=False)[0])
        return cls(public, secret, server_key, frozenset(authorized), name)


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--curve-keys DIR``, ``--curve-name NAME`` and ``--curve-server NAME`` to a stage's parser."""
    group = parser.add_argument_group("CurveZMQ (encryption and authentication of tcp endpoints)")
    group.add_argument("--curve-keys", metavar="DIR", default=None,
                       help="key directory (python -m stream keys generate DIR); tcp endpoints then use CurveZMQ")
    group.add_argument("--curve-name", metavar="NAME", default=None,
                       help="this stage's key DIR/NAME.key_secret (default: the only secret key in DIR)")
    group.add_argument("--curve-server", metavar="NAME", default=None,
                       help="public key DIR/NAME.key of the publisher to connect to (default: --curve-name)")  # fmt: skip


def curve_from_args(args: argparse.Namespace) -> CurveConfig | None:
    """The ``CurveConfig`` the arguments of ``add_curve_arguments`` ask for, or None without ``--curve-keys``.

    Raises ``CurveKeyError`` (a ValueError, one line) for a missing or unsafe key.
    """
    if getattr(args, "curve_keys", None) is None:
        if getattr(args, "curve_name", None) or getattr(args, "curve_server", None):
            raise CurveKeyError("--curve-name and --curve-server need --curve-keys DIR")
        return None
    return CurveConfig.from_directory(args.curve_keys, args.curve_name, args.curve_server)
