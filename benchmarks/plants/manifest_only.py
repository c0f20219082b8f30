"""Bugs planted by hand in the manifest-only PoisonSet path (poisonbench/poisons/store.py, experiment/craft_check.py;
docs/testing.md, 2026-11-29): benchmarks/plant_by_hand.py."""
# ruff: noqa: E501  (each plant is one line of source, as it is in the module)
S = "poisonbench/poisons/store.py"
K = "poisonbench/experiment/craft_check.py"
TESTS = ["tests/test_manifest_only.py"]
PLANTS = [
    ("exists-manifest-only", S, "    return (directory / MANIFEST_FILE).exists() and os.path.lexists(directory / TENSOR_FILE)", "    return (directory / MANIFEST_FILE).exists()"),
    ("exists-or", S, "    return (directory / MANIFEST_FILE).exists() and os.path.lexists(directory / TENSOR_FILE)", "    return (directory / MANIFEST_FILE).exists() or os.path.lexists(directory / TENSOR_FILE)"),
    ("pairing-needs-tensors", K, "    from ..poisons.store import has_manifest, read_manifest", "    from ..poisons.store import exists as has_manifest, read_manifest"),
    ("no-hash-check", S, "    if crafted != pinned:", "    if False:"),
    ("hash-check-inverted", S, "    if crafted != pinned:", "    if crafted == pinned:"),
    ("manifest-rewritten", S, "    atomic_write_bytes(final / TENSOR_FILE, blob)\n    poison.manifest, poison.path = manifest, final", "    atomic_write_bytes(final / TENSOR_FILE, blob)\n    atomic_write_json(final / MANIFEST_FILE, {**manifest, 'created_at': 'now'})\n    poison.manifest, poison.path = manifest, final"),
    ("craft-manifest-returned", S, "    atomic_write_bytes(final / TENSOR_FILE, blob)\n    poison.manifest, poison.path = manifest, final", "    atomic_write_bytes(final / TENSOR_FILE, blob)\n    poison.path = final"),
    ("written-before-check", S, "    pinned, crafted = manifest.get(\"tensor_sha256\"), _sha256(blob)\n", "    pinned, crafted = manifest.get(\"tensor_sha256\"), _sha256(blob)\n    atomic_write_bytes(final / TENSOR_FILE, blob)\n"),
    ("force-restores", S, "    if not replace and manifest_only(final):", "    if manifest_only(final):"),
    ("restore-never", S, "    if not replace and manifest_only(final):", "    if replace and manifest_only(final):"),
    ("message-hashes-swapped", S, 'f"poison set {poison_id}: the craft\'s tensors (sha256 {crafted[:12]}) are not those its manifest pins "', 'f"poison set {poison_id}: the craft\'s tensors (sha256 {str(pinned)[:12]}) are not those its manifest pins "'),
]
