"""Sealed originals coded as video: the PSNR bound, bit-exact lossless mode, constant padding,
clips split by time, and vaults written by format version 1 still read, verify and unmask."""

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

import keys.clips as clips
from gateway.cli import main
from gateway.files import VideoTranscoder
from keys import Grant, KeyDirectory, PrivateIdentity, Sealed, Sealer, Selection, Unmask, VaultStore, verify_vault
from keys.clips import FFV1, FFV1_DELTA, H264, MIN_PSNR, ClipCoder, decode, psnr, restored_psnr
from keys.seal import CLIP_SECONDS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "config" / "samples" / "vtest-10s.mp4"
V1 = Path(__file__).resolve().parent / "data" / "vault-v1"
FPS = 10  # the sample's rate


@pytest.fixture(scope="module")
def frames():
    with av.open(str(SAMPLE)) as container:
        return [f.to_ndarray(format="bgr24") for _, f in zip(range(45), container.decode(video=0))]


def moving_boxes(index: int, height: int, width: int) -> dict[int, tuple[int, int, int, int]]:
    """Three tracks over the walkway: one growing, one shrinking, one sliding along the borders."""
    grow = 16 + 3 * index
    shrink = max(8, 150 - 3 * index)
    side = 40 + index % 7  # odd and even sizes
    border = (0, height - side) if index % 2 else (width - side, 0)  # touching two borders in turn
    return {1: (200, 150, grow, grow + 7), 2: (400, 100, shrink, shrink // 2 + 5), 3: (*border, side, side)}


def seal_frames(tmp_path, frames, mode: str, sealing_store):
    directory = KeyDirectory.init(tmp_path / "keys")
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    directory.add(ivan.public)
    store = sealing_store(tmp_path / "vault", directory)
    height, width = frames[0].shape[:2]
    with Sealer(store, directory.signer, "walkway", {"version": 1, "storage": {"originals": mode}},
                {"face": Grant(("investigator",))}, directory.identities) as sealer:
        for index, image in enumerate(frames):
            regions = [Sealed(t, "face", b, image[b[1] : b[1] + b[3], b[0] : b[0] + b[2]].copy())
                       for t, b in moving_boxes(index, height, width).items()]
            sealer.add(index, index * 1_000_000 // FPS, regions)
    return store, sealer, ivan


@pytest.mark.parametrize("mode", ["high", "lossless"])
def test_restored_regions_meet_the_mode_bound_on_a_real_clip(tmp_path, frames, mode, sealing_store):
    store, sealer, ivan = seal_frames(tmp_path, frames, mode, sealing_store)
    segment, = store.verify_chain("walkway")
    codecs = {r.header.codec for r in segment.records}
    assert codecs == {H264} if mode == "high" else codecs <= {FFV1, FFV1_DELTA}
    # clips close every CLIP_SECONDS of a track: 45 frames at 10 fps are three clips per track
    assert len(segment.records) == 3 * -(-len(frames) // int(CLIP_SECONDS * FPS)) and sealer.regions == 3 * len(frames)
    job = Unmask(store, sealer.ref, Selection(), [ivan])
    job.authorize("C-1", "test", "memory", True)
    worst = float("inf")
    height, width = frames[0].shape[:2]
    for index, original in enumerate(frames):
        image = np.zeros_like(original)
        assert job.restore(index, index / FPS, image, tolerance_us=1000) == 3
        for x, y, w, h in moving_boxes(index, height, width).values():
            back = image[y : y + h, x : x + w]
            if mode == "lossless":
                assert np.array_equal(back, original[y : y + h, x : x + w])
            worst = min(worst, psnr(original[y : y + h, x : x + w], back))
    assert worst >= MIN_PSNR
    assert job.unused == 0


def test_a_region_others_overlap_is_bounded_by_their_crops_too():
    """Where restored regions overlap, a pixel shows the crop restored last: a region's squared error
    is at most its own crop's and those of the crops overlapping it, each within the bound."""
    assert restored_psnr((0, 0, 10, 10), []) == MIN_PSNR
    assert restored_psnr((0, 0, 10, 10), [(10, 0, 5, 5), (0, 10, 4, 4)]) == MIN_PSNR  # touching only
    assert restored_psnr((0, 0, 10, 10), [(5, 5, 10, 10)]) == pytest.approx(MIN_PSNR - 10 * np.log10(2))
    assert restored_psnr((0, 0, 10, 10), [(5, 5, 20, 20), (2, 2, 3, 3)]) == pytest.approx(
        MIN_PSNR - 10 * np.log10((100 + 400 + 9) / 100))


def test_a_time_range_opens_only_the_clips_it_overlaps(tmp_path, frames, monkeypatch, sealing_store):
    store, sealer, ivan = seal_frames(tmp_path, frames[:30], "high", sealing_store)
    decoded = []
    real = clips.decode
    monkeypatch.setattr("keys.record.decode", lambda *a, **k: decoded.append(a[4] if len(a) > 4 else k.get("count"))
                        or real(*a, **k))
    job = Unmask(store, sealer.ref, Selection(tracks=frozenset({1}), start_us=500_000, end_us=700_000), [ivan])
    job.authorize("C-1", "test", "memory", True)
    for index in range(30):
        job.restore(index, index / FPS, np.zeros_like(frames[0]), tolerance_us=1000)
    assert job.restored == 3 and decoded == [8]  # one clip (frames 0-19), decoded up to frame 7, not beyond


def test_padding_is_a_constant_never_the_surrounding_pixels(frames):
    crops = [frames[i][100 : 100 + 20 + i, 300 : 330 - i].copy() for i in range(10)]
    for mode in ("high", "lossless"):
        codec, size, coded = ClipCoder(mode).encode(crops)
        assert size == (30, 29)
        canvases = decode(codec, size, coded, [(size[1], size[0])] * len(crops))
        for crop, canvas in zip(crops, canvases):
            h, w = crop.shape[:2]
            padding = np.concatenate([canvas[h:].reshape(-1, 3), canvas[:h, w:].reshape(-1, 3)])
            assert padding.size and (padding.max() == 0 if mode == "lossless" else padding.mean() < 2)


def test_the_quantiser_falls_until_the_bound_holds_and_rises_when_there_is_room(frames):
    noisy = [np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8) for i in range(5)]
    coder = ClipCoder("high", qp={("face", 1): 30})  # as if the track's last clip had been easy
    codec, size, coded = coder.encode(noisy, ("face", 1))
    assert min(psnr(a, b) for a, b in zip(noisy, decode(codec, size, coded, [(24, 24)] * 5))) >= MIN_PSNR
    assert coder.qp[("face", 1)] < 30 and coder.encodes > 1  # noise needed finer quantisers, tried in turn
    flat = [np.full((48, 48, 3), 90, dtype=np.uint8)] * 5
    coder.encode(flat, ("face", 2))
    assert coder.qp[("face", 2)] > clips._FIRST_QP  # a flat clip leaves room: the next one starts coarser


def test_a_clip_of_small_pictures_keeps_the_first_quantiser_that_passes():
    """Under 32x32 px a second, coarser try costs about what the first did (opening the encoder,
    PyAV's work per picture) for a few bytes: a small flat clip is coded once; the same clip on a
    48x48 canvas still looks for room."""
    for side, once in ((24, True), (48, False)):
        coder = ClipCoder("high", qp={("face", 1): 12})
        crops = [np.full((side, side, 3), 90, dtype=np.uint8)] * 5
        codec, size, coded = coder.encode(crops, ("face", 1))
        assert min(psnr(a, b) for a, b in zip(crops, decode(codec, size, coded, [(side, side)] * 5))) >= MIN_PSNR
        assert (coder.encodes == 1 and coder.qp[("face", 1)] == 12) is once, side


@pytest.mark.parametrize("start", [8, 24])
@pytest.mark.parametrize("region", [(100, 300, 60, 48), (300, 100, 40, 40), (150, 500, 120, 90)])
def test_the_quantiser_kept_is_the_coarsest_that_meets_the_bound(frames, region, start):
    """From a start far off either way (a track whose last clip was much easier or harder), the
    search ends on a quantiser that passes while the next coarser one falls short: no slack
    left above the bound (each step of it is about 10 % more bytes)."""
    y, x, h, w = region
    crops = [image[y : y + h, x : x + w].copy() for image in frames[:20]]
    coder = ClipCoder("high", qp={("face", 1): start})
    codec, size, coded = coder.encode(crops, ("face", 1))
    kept = coder.qp[("face", 1)]

    def worst(data: bytes) -> float:
        return min(psnr(a, b) for a, b in zip(crops, decode(codec, size, data, [(h, w)] * len(crops))))

    assert worst(coded) >= MIN_PSNR > worst(clips._encode(H264, clips._canvases(crops, size), kept + 1))
    assert coder.encodes <= clips._MAX_TRIES


@pytest.mark.skipif(not clips._Reconstruction.possible(), reason="no memfd on this platform (the clip is decoded)")
@pytest.mark.parametrize("region", [(100, 300, 21, 23), (150, 500, 120, 90)])
def test_the_pictures_checked_are_those_a_decoder_gives_back(frames, region):
    """The bound is checked on x264's reconstruction of a clip: FFmpeg's decoder gives back the
    same pixels, bit for bit (odd and even sizes); a clip whose reconstruction x264 did not write
    is decoded instead, with the same outcome."""
    y, x, h, w = region
    crops = [image[y : y + h, x : x + w].copy() for image in frames[:12]]
    canvases = clips._canvases(crops, clips.canvas_size(crops))
    reconstruction = clips._Reconstruction()
    coded = clips._encode(H264, canvases, 20, reconstruction)
    restored = reconstruction.read(canvases.shape)
    assert restored is not None and np.array_equal(restored, clips._decode(H264, (w, h), coded, len(crops)))
    reconstruction.start()
    clips._encode(H264, canvases, 20)  # the next clip (the same shape) coded without writing it back:
    assert reconstruction.read(canvases.shape) is None  # the last one's pictures are not read for it
    coder = ClipCoder("high")
    assert coder._reconstruction is not None
    with_reconstruction = coder.encode(crops, ("face", 1))
    start = coder._reconstruction.start
    coder._reconstruction.start = lambda: (start(), "ref=3")[1]  # emptied, but x264 writes nothing back
    coder.qp.clear()
    assert coder.encode(crops, ("face", 1)) == with_reconstruction


def test_the_keyframe_is_coded_one_step_finer_than_the_p_frames_and_x264s_notice_is_not_stored(frames, monkeypatch):
    """x264 states its settings in its notice in the stream: the keyframe/P-frame ratio is 1.1 (one
    quantiser step), not x264's default 1.4 (three), which spends bytes on a keyframe far above a
    per-frame bound. A stored clip leaves that notice out (hundreds of bytes a clip) and decodes to
    the same pictures."""
    crops = [frames[i][200:280, 300:360].copy() for i in range(5)]
    canvases = clips._canvases(crops, clips.canvas_size(crops))
    stored = clips._encode(H264, canvases, 20)
    with monkeypatch.context() as patch:
        patch.setattr(clips, "_without_notice", lambda packet: packet)
        coded = clips._encode(H264, canvases, 20)
    assert b" ip_ratio=1.10 " in coded and b" chroma_qp_offset=12 " in coded and b" bframes=0 " in coded
    assert b" scenecut=0 " in coded  # no keyframe within a clip but the first
    assert b" weightp=0 " in coded  # no weighted prediction: on these crops it cost time and bytes
    assert b"x264" not in stored and len(stored) < len(coded) - 300
    shapes = [(80, 60)] * 5
    assert all(np.array_equal(a, b) for a, b in zip(decode(H264, (60, 80), stored, shapes),
                                                   decode(H264, (60, 80), coded, shapes)))


def test_unknown_originals_mode_is_refused(tmp_path, sealing_store):
    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    store = sealing_store(tmp_path / "vault", directory)
    with pytest.raises(ValueError, match="storage.originals must be one of high, lossless"):
        Sealer(store, directory.signer, "cam", {"storage": {"originals": "tiny"}}, {"face": Grant(("investigator",))},
               directory.identities)
    Sealer(store, directory.signer, "cam", {}, {"face": Grant(("investigator",))}, directory.identities).close()


# --- a vault written by format version 1 ------------------------------------------------------------

@pytest.fixture()
def old_vault(tmp_path, monkeypatch):
    root = tmp_path / "v1"
    shutil.copytree(V1, root)
    (root / "keys" / "gateway.key").chmod(0o600)  # git does not keep modes
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", "fixture passphrase v1")
    return root


def test_a_version_1_vault_still_verifies_and_unmasks(old_vault, capsys):
    store = VaultStore.open(old_vault / "vault")
    (segment,) = store.verify_chain("walkway")
    assert segment.header.version == 1 and {r.header.version for r in segment.records} == {1}
    assert verify_vault(store).segments == 1
    out = old_vault / "frames"
    assert main(["unmask", str(old_vault / "redacted.mp4"), "--vault", str(old_vault / "vault"), "--keys",
                 str(old_vault / "keys"), "--identity", str(old_vault / "ines.identity"), "--case", "C-1",
                 "--reason", "old vault", "-o", str(out)]) == 0, capsys.readouterr().err
    originals = [f.image for f in VideoTranscoder(old_vault / "clip.mp4").frames()]
    restored = 0
    for record in segment.records:
        (placement,) = record.header.placements
        x, y, w, h = placement.box
        image = av.open(str(out / f"{placement.frame:06d}.png")).decode(video=0).__next__().to_ndarray(format="bgr24")
        if 0.1 * image.shape[0] < y and y + h < 0.9 * image.shape[0]:  # clear of the watermark bands
            assert np.array_equal(image[y : y + h, x : x + w], originals[placement.frame][y : y + h, x : x + w])
            restored += 1
    assert restored >= 10
    assert main(["vault", "verify", "--vault", str(old_vault / "vault"), "--keys", str(old_vault / "keys")]) == 0


def test_a_tampered_version_1_segment_is_still_caught(old_vault, capsys):
    path = old_vault / "vault" / "segments" / "walkway" / "00000001.pgv"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert main(["vault", "verify", "--vault", str(old_vault / "vault")]) == 1
    assert "00000001.pgv: contents altered" in capsys.readouterr().err


def test_lossless_clips_of_large_crops_stay_exact(frames):
    """FFV1 takes one slice only for small pictures; larger ones use its own slicing, still exact."""
    crops = [frames[i][0:270, 0:330].copy() for i in range(3)]
    codec, size, coded = ClipCoder("lossless").encode(crops)
    assert codec in (FFV1, FFV1_DELTA) and size == (330, 270)  # a still corner: differences
    assert all(np.array_equal(a, b) for a, b in zip(crops, decode(codec, size, coded, [(270, 330)] * 3)))


@pytest.mark.parametrize(("region", "pan", "codec"), [
    ((20, 20, 60, 50), 0, FFV1_DELTA),  # the walkway's top-left corner: nobody walks there
    ((10, 600, 40, 30), 0, FFV1_DELTA),
    ((200, 300, 80, 60), 0, FFV1),  # people walk through it
    ((200, 100, 60, 50), 7, FFV1),  # a box sliding 7 px a frame: its crops share little
])
def test_lossless_clips_of_a_still_scene_are_coded_as_differences(frames, region, pan, codec):
    """A fixed camera's decoder hands over unchanged pixels from picture to picture; FFV1 alone
    codes each picture afresh. A clip closer to its previous pictures than to its own neighbours
    is coded as differences (about half the bytes here), and restored bit-exact, also in part."""
    y, x, h, w = region
    crops = [image[y : y + h, x + i * pan : x + i * pan + w].copy() for i, image in enumerate(frames[:20])]
    got, size, coded = ClipCoder("lossless").encode(crops)
    assert got == codec
    for count in (None, 1, 7):
        back = decode(got, size, coded, [(h, w)] * len(crops), count)
        assert len(back) == (count or len(crops)) and all(np.array_equal(a, b) for a, b in zip(crops, back))
    if codec == FFV1_DELTA:
        assert len(coded) < 0.6 * len(clips._encode(FFV1, clips._canvases(crops, size), None))


def test_a_single_picture_is_never_coded_as_differences(frames):
    """Still images (one picture a region) and one-frame clips stay plain FFV1."""
    crop = frames[0][20:80, 20:70].copy()
    codec, size, coded = ClipCoder("lossless").encode([crop])
    assert codec == FFV1 and np.array_equal(decode(codec, size, coded, [(60, 50)])[0], crop)


def test_high_clips_have_no_b_frames(frames):
    """Decoding order is display order (the format says so), which also keeps B-frames, coded
    coarser by x264 at a constant quantiser, from setting the clip's quantiser."""
    crops = [frames[i][200:280, 300:360].copy() for i in range(20)]
    codec, size, coded = ClipCoder("high").encode(crops)
    context = av.CodecContext.create("h264", "r")
    at, kinds = 4 + int.from_bytes(coded[:4], "big"), []
    while at < len(coded):
        length = int.from_bytes(coded[at : at + 4], "big")
        kinds += [p.pict_type for p in context.decode(av.Packet(coded[at + 4 : at + 4 + length]))]
        at += 4 + length
    kinds += [p.pict_type for p in context.decode(None)]
    assert len(kinds) == 20 and av.video.frame.PictureType.B not in kinds
