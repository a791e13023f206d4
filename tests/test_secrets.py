"""forkops.secrets: every spelling the key-site reader decodes is found; masking; streams."""

from __future__ import annotations

import base64
import itertools
import random

import pytest

from forkops import keyfile
from forkops.secrets import Matcher, StreamRedactor, encodings, mask_bytes, mask_text

KEY = b"Tk9fQ2xxZmEzNXR1"
BINARY = bytes([0x00, 0x07, 0x22, 0x5C, 0x3F, 0x0A, 0xFF, 0x80, 0x41, 0x30, 0x09, 0x27, 0x7F, 0x01, 0x61, 0x38])


def matcher(key: bytes = KEY) -> Matcher:
    return Matcher(keyfile.KeyMaterial("aes-128-cbc", key, b"7" * 16))


def c_array_spellings(secret: bytes) -> list[str]:
    """Array spellings c_bytes.decode reads: hex any case, octal, decimal, u/U suffixes,
    comments between elements, line splits, trailing comma."""
    styles = [
        lambda b: f"0x{b:02x}", lambda b: f"0X{b:02X}", lambda b: f"0x{b:X}u", lambda b: f"{b}U",
        lambda b: f"0{b:o}" if b else "0", lambda b: f"{b}",
    ]
    seps = [", ", ",\n  ", " /* c */ , ", ",// line comment\n", ",\t"]
    out = []
    for style, sep in itertools.product(styles, seps):
        out.append("{" + sep.join(style(b) for b in secret) + "}")
    mixed = "{" + ",\n".join(styles[i % len(styles)](b) for i, b in enumerate(secret)) + ",}"
    out.append(mixed)
    return out


def c_string_spellings(secret: bytes) -> list[str]:
    """String spellings c_string.decode reads (and what the compiler joins)."""
    hexes = "".join(f"\\x{b:02x}" for b in secret)
    upper = "".join(f"\\X{b:02X}" for b in secret)
    octal = "".join(f"\\{b:o}" for b in secret)
    octal3 = "".join(f"\\{b:03o}" for b in secret)
    mixed = "".join(f"\\{b:o}" if i % 3 == 0 else f"\\x{b:x}" for i, b in enumerate(secret))
    out = [f'"{s}"' for s in (hexes, upper, octal, octal3, mixed)]
    if secret.isalnum():
        plain = secret.decode()
        out.append('"' + "".join(c if i % 2 else f"\\{ord(c):o}" for i, c in enumerate(plain)) + '"')
    return out


def compiler_joined(secret: bytes) -> list[str]:
    """What the compiler joins into one literal (the site reader reads one literal only)."""
    hexes = "".join(f"\\x{b:02x}" for b in secret)
    half = len(hexes) // 2 // 4 * 4
    out = [f'"{hexes[:half]}" /* joined */\n   "{hexes[half:]}"', f'"{hexes[:half]}\\\n{hexes[half:]}"']
    if secret.isalnum():
        out.append(f'"{secret.decode()[:5]}" "{secret.decode()[5:]}"')
    return out


@pytest.mark.parametrize("secret", [KEY, BINARY], ids=["printable", "binary"])
def test_every_spelling_the_reader_decodes_is_found(secret: bytes) -> None:
    m = matcher(secret)
    cases = [(t, "c-bytes") for t in c_array_spellings(secret)] + [(t, "c-string") for t in c_string_spellings(secret)]
    cases.append((encodings.get("c-string").encode(secret), "c-string"))
    if secret.isalnum():
        cases += [(secret.decode(), "bazel-define"), (f'"{secret.decode()}"', "bazel-define")]
    for text, name in cases:
        assert encodings.get(name).decode(text) == secret, text  # the reader reads it as the key...
        data = b"static const char k[] = " + text.encode("utf-8", "surrogateescape") + b";\n"
        assert m.find(data), text  # ...so the matcher must find it
    for text in compiler_joined(secret):
        assert m.find(text.encode()), text


@pytest.mark.parametrize("secret", [KEY, BINARY], ids=["printable", "binary"])
def test_hex_and_base64_are_found_at_every_alignment(secret: bytes) -> None:
    m = matcher(secret)
    h = secret.hex()
    for text in (h, h.upper(), h[:10] + "\n" + h[10:].upper()):
        assert m.find(b"x " + text.encode() + b" y") == [("key", "hex")]
    for prefix in (b"", b"a", b"ab", b"abc"):
        for alt, form in ((b"+/", "base64"), (b"-_", "base64url")):
            enc = base64.b64encode(prefix + secret + b"tail", altchars=alt)
            assert ("key", form) in m.find(enc) or m.find(enc), (prefix, form)
            wrapped = b"\n".join(enc[i:i + 8] for i in range(0, len(enc), 8))
            assert m.find(wrapped), (prefix, form, "wrapped")


def test_the_registry_names_are_the_playbook_encodings() -> None:
    assert tuple(encodings.registry()) == encodings.NAMES


def test_near_misses_are_not_hits() -> None:
    m = matcher()
    assert m.find(b"{1" + b",".join(str(b).encode() for b in KEY) + b"}") == []  # 184 is not 84
    assert m.find(KEY[:-1] + b"X") == []
    assert m.find(b'kIv[] = "7777777777777777"; {0x37, 0x37}') == []


def test_masking_bytes_and_text() -> None:
    m = matcher()
    fp = keyfile.fingerprint(KEY)
    assert mask_bytes(b"a " + KEY + b" b", m) == f"a <key {fp}> b".encode()
    assert mask_text(f"é {KEY.hex()} ü", m) == f"é <key {fp}> ü"


def test_stream_redactor_masks_a_key_split_across_lines() -> None:
    m = matcher()
    fp = keyfile.fingerprint(KEY)
    r = StreamRedactor(m)  # the default window holds a 16-line array
    lines = [b"step 1\n", b"flag=" + KEY[:7] + b"\n", KEY[7:] + b" done\n", b"x\n"]
    arr = [f"0x{b:02x},".encode() + b"\n" for b in KEY]
    out: list[bytes] = []
    for line in lines + arr + [b"end\n"]:
        out += r.feed(line)
    out += r.flush()
    joined = b"".join(out)
    assert m.find(joined) == [] and m.find(joined.replace(b"\n", b"")) == []
    assert out[1] == f"flag=<key {fp}>\n".encode() and out[2] == b" done\n"
    assert len(out) == len(lines) + len(arr) + 1


def test_mask_secrets_masks_site_values_and_a_key_a_diff_splits() -> None:
    from forkops import playbook
    from forkops.secrets import MASKED_SITE, mask_secrets

    pb = playbook.load("tensorflow")
    mat = keyfile.KeyMaterial("aes-128-cbc", KEY, b"7" * 16)
    arr = ", ".join(f"0x{b:02x}" for b in KEY)
    diff = f"-byte key[16] = {{{arr}}};\n+byte key[16] = {{0x00}};\n"
    out = mask_secrets(diff, pb, mat)
    assert MASKED_SITE in out and matcher().find(out.encode()) == []
    split = "+  // " + KEY.hex()[:12] + "\n+" + KEY.hex()[12:] + "\n"  # a key a diff wraps over two lines
    out = mask_secrets(split, pb, mat)
    assert matcher().find(out.encode()) == []
    plain = "".join(line[1:] for line in out.splitlines(keepends=True))
    assert matcher().find(plain.encode()) == []
    assert mask_secrets("nothing secret\n", pb, mat) == "nothing secret\n"


def _random_c_string(rng: random.Random, secret: bytes) -> str:
    parts: list[str] = []
    prev = ""  # what the previous spelling ends with: an escape may swallow a following digit
    for b in secret:
        options = [f"\\{rng.choice('xX')}{'0' * rng.randrange(3)}{b:0{rng.choice((1, 2))}{rng.choice('xX')}}",
                   f"\\{b:0{rng.randrange(len(f'{b:o}'), 4)}o}"]
        c = chr(b)
        raw_ok = 0x20 <= b < 0x7F and c not in '"\\?' and not (
            (prev == "hex" and c in "0123456789abcdefABCDEF") or (prev == "oct" and c in "01234567"))
        if raw_ok:
            options.append(c)
        pick = rng.choice(options)
        prev = "raw" if pick == c else ("hex" if pick[1] in "xX" else ("oct" if len(pick) < 4 else "raw"))
        parts.append(pick)
    return '"' + "".join(parts) + '"'


def _random_c_array(rng: random.Random, secret: bytes) -> str:
    def element(b: int) -> str:
        style = rng.randrange(4)
        text = (f"0x{b:x}", f"0X{b:02X}", f"0{b:o}" if b else "0", str(b))[style]
        return text + rng.choice(("", "u", "U"))

    seps = (", ", ",\n    ", " /* pad */ ,", ",// note\n", ",\t")
    return "{" + "".join(element(b) + (rng.choice(seps) if i < len(secret) - 1 else "")
                         for i, b in enumerate(secret)) + rng.choice(("}", ",}", ", }"))


def test_random_spellings_the_reader_decodes_are_all_found() -> None:
    rng = random.Random(12)
    for _ in range(60):
        secret = bytes(rng.randrange(256) for _ in range(rng.choice((16, 24, 32))))
        m = matcher(secret)
        for name, text in (("c-string", _random_c_string(rng, secret)), ("c-bytes", _random_c_array(rng, secret))):
            assert encodings.get(name).decode(text) == secret, text
            assert m.find(b"x = " + text.encode() + b";"), text
