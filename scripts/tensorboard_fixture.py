"""Read the event file our writer produced with TensorBoard's own reader.

`cargo test tensorboard_fixture` writes tests/fixtures/tensorboard/events.out.tfevents.fixture
from tests/fixtures/tensorboard/log.jsonl when CHEX_BLESS_TENSORBOARD=1 is set. This script
checks both CRCs of every record with tensorboard's masked CRC-32C, loads the folder with
tensorboard's EventAccumulator (what the TensorBoard UI uses) and writes what it read to
tests/fixtures/tensorboard/expected.json, which the Rust test compares with the log.

    pip install tensorboard==2.21.0
    python scripts/tensorboard_fixture.py
"""

import json
import pathlib
import struct

import tensorboard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

here = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tensorboard"
events = here / "events.out.tfevents.fixture"

data = events.read_bytes()
offset, records = 0, 0
while offset < len(data):
    header = data[offset : offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
    assert header_crc == masked_crc32c(header), f"record {records}: length CRC"
    body = data[offset + 12 : offset + 12 + length]
    (body_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
    assert body_crc == masked_crc32c(body), f"record {records}: data CRC"
    offset += 16 + length
    records += 1

accumulator = EventAccumulator(str(here), size_guidance={"scalars": 0})
accumulator.Reload()
read = []
for tag in sorted(accumulator.Tags()["scalars"]):
    for event in accumulator.Scalars(tag):
        read.append(
            {"tag": tag, "step": event.step, "wall_time": event.wall_time, "value": event.value}
        )
out = {
    "tensorboard": tensorboard.__version__,
    "records": records,
    "file_version": accumulator.file_version,
    "scalars": read,
}
(here / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
print(f"{records} records, {len(read)} scalars read by tensorboard {tensorboard.__version__}")
