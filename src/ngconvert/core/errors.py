"""Errors that reach the user as one line (exit status 2)."""


class UserError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the problem and the fix; the CLI prints it
    without a traceback and exits with status 2.
    """


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def read_text_file(path, what: str = "file") -> str:
    """The text of a small input file (order file, origins, ids, label table): UTF-8, or
    UTF-8/UTF-16/UTF-32 with a byte-order mark (as Windows editors save), else Latin-1.
    Unreadable or binary files are one :class:`UserError` line naming the file."""
    import os

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}; check the path") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror or e}); check the path and "
                        "its permissions") from None
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(enc)
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: the {what} is not valid {enc.split('-sig')[0].upper()} text "
                                f"({e.reason} at byte {e.start}); save it again as UTF-8") from None
    if b"\x00" in raw[:4096]:
        raise UserError(f"{path}: the {what} is not a text file (it has NUL bytes; UTF-16 without a "
                        "byte-order mark?); save it as UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


NAME_MAX = 255          # bytes of one file or folder name on common file systems (ext4, XFS, APFS, NTFS)
PATH_MAX = 4096


def check_local_path(path, what: str = "path") -> str:
    """``path`` as a string, refused in one line when it is empty or has a name longer than
    the file system allows (ENAMETOOLONG otherwise surfaces later as a traceback)."""
    import os

    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.strip() == "":
        raise UserError(f"the {what} path is empty ({text!r}); give a file or folder name (use . for the "
                        "current folder)")
    for name in text.replace("\\", "/").split("/"):
        size = len(os.fsencode(name))
        if size > NAME_MAX:
            raise UserError(f"{what} {text[:60]}...: the name {name[:24]}... is {size} bytes long, file systems "
                            f"allow at most {NAME_MAX}; choose a shorter name")
    if len(os.fsencode(text)) >= PATH_MAX:
        raise UserError(f"{what} {text[:60]}...: the path is {len(os.fsencode(text))} bytes long, more than "
                        f"the {PATH_MAX} the system allows; choose a shorter path")
    return text
