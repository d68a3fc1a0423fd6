"""The converter's step cache keys files by their contents."""
import os

from converters.step_cache import files_fingerprint


def test_a_file_keeps_its_key_when_only_its_time_changes_and_loses_it_when_its_bytes_do(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 one photo")
    key = files_fingerprint([photo])
    os.utime(photo, (1_000_000_000, 1_000_000_000))  # copied or re-provisioned: a new time, same bytes
    assert files_fingerprint([photo]) == key
    stat = photo.stat()
    photo.write_bytes(b"\xff\xd8 another photo")  # rewritten with the old time kept
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert files_fingerprint([photo]) != key
