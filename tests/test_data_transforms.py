"""Transform presets (boxes/masks move with the image), aspect-ratio batching and collate."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from torchvision import tv_tensors

from se_plugins.data import (
    CocoDetection,
    GroupedBatchSampler,
    PadToMultiple,
    create_aspect_ratio_groups,
    detection_collate,
    detection_transforms,
    make_shapes,
    segmentation_transforms,
)


def _sample(h=32, w=64):
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.rand(3, h, w))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([[2.0, 4.0, 12.0, 20.0], [30.0, 0.0, 64.0, 32.0], [5.0, 5.0, 6.5, 9.0]]),
            format="XYXY",
            canvas_size=(h, w),
        ),
        "labels": torch.tensor([1, 2, 3]),
        "area": torch.tensor([160.0, 1088.0, 6.0]),
        "iscrowd": torch.zeros(3, dtype=torch.int64),
        "difficult": torch.tensor([False, True, False]),
        "image_id": 7,
    }
    return image, target


def test_flip_moves_boxes_exactly():
    image, target = _sample()
    out_image, out = detection_transforms(True, min_size=None, hflip_prob=1.0)(image, target)
    assert torch.equal(out_image, image.flip(-1))
    # x1' = W - x2, x2' = W - x1 (W = 64)
    assert out["boxes"].tolist() == [[52, 4, 62, 20], [0, 0, 34, 32], [57.5, 5, 59, 9]]
    assert out["labels"].tolist() == [1, 2, 3] and out["image_id"] == 7


def test_multiscale_resize_and_sanitize():
    image, target = _sample()
    out_image, out = detection_transforms(True, min_size=[48], max_size=1000, hflip_prob=0.0)(image, target)
    assert out_image.shape == (3, 48, 96) and out["boxes"].canvas_size == (48, 96)
    assert torch.allclose(
        out["boxes"], torch.tensor([[3.0, 6, 18, 30], [45, 0, 96, 48], [7.5, 7.5, 9.75, 13.5]])
    )
    # shrink: the 1.5 px wide box becomes 0.75 px and is removed together with its per-box fields
    out_image, out = detection_transforms(True, min_size=[16], max_size=1000, hflip_prob=0.0)(image, target)
    assert out_image.shape == (3, 16, 32)
    assert torch.allclose(out["boxes"], torch.tensor([[1.0, 2, 6, 10], [15, 0, 32, 16]]))
    assert out["labels"].tolist() == [1, 2] and out["area"].tolist() == [160.0, 1088.0]
    assert out["iscrowd"].tolist() == [0, 0] and out["difficult"].tolist() == [False, True]
    # max_size caps the longer side: shorter 64 would make it 128 > 100
    out_image, out = detection_transforms(True, min_size=64, max_size=100, hflip_prob=0.0)(image, target)
    assert out_image.shape == (3, 50, 100)


def test_detection_eval_and_dtype():
    image, target = _sample()
    out_image, out = detection_transforms(False, min_size=None)(image, target)
    assert torch.equal(out_image, image) and torch.equal(out["boxes"], target["boxes"])
    out_image, out = detection_transforms(False, min_size=[40, 48], max_size=1000)(image, target)
    assert out_image.shape == (3, 48, 96) and out["boxes"][0].tolist() == [3, 6, 18, 30]
    uint8 = tv_tensors.Image(torch.full((3, 32, 64), 255, dtype=torch.uint8))
    out_image, _ = detection_transforms(False, min_size=None)(uint8, target)
    assert out_image.dtype == torch.float32 and out_image.max() == 1.0
    with pytest.raises(ValueError, match="max_size"):
        detection_transforms(True, min_size=900, max_size=853)
    pickle.loads(pickle.dumps(detection_transforms(True)))  # DataLoader workers need picklable transforms


def _seg_sample(h=20, w=30):
    image = tv_tensors.Image(torch.rand(3, h, w) * 0.5 + 0.5)  # > 0 so padding (0) is recognisable
    mask = tv_tensors.Mask(torch.randint(0, 4, (h, w)))
    return image, mask


def test_segmentation_crop_pads_mask_with_255():
    image, mask = _seg_sample()
    tf = segmentation_transforms(True, crop_size=64, scale_range=(1.0, 1.0), hflip_prob=0.0, base_size=20)
    out_image, out_mask = tf(image, mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64) and out_mask.dtype == torch.int64
    inside = out_mask != 255
    assert inside.sum() == 20 * 30 and (out_mask == 255).sum() == 64 * 64 - 600
    rows, cols = inside.nonzero(as_tuple=True)
    r0, c0 = rows.min().item(), cols.min().item()
    assert torch.equal(out_mask[r0 : r0 + 20, c0 : c0 + 30], mask)
    assert torch.equal(out_image[:, r0 : r0 + 20, c0 : c0 + 30], image)
    assert (out_image[:, ~inside] == 0).all()


def test_segmentation_random_scale_keeps_labels_and_alignment():
    torch.manual_seed(1)
    blocks = torch.randint(0, 4, (5, 5)).repeat_interleave(8, 0).repeat_interleave(8, 1)  # 40x40, 8-px blocks
    mask = tv_tensors.Mask(blocks)
    image = tv_tensors.Image(blocks.float().div(3).expand(3, -1, -1).clone())  # image encodes the mask
    tf = segmentation_transforms(True, crop_size=32, scale_range=(0.5, 2.0), hflip_prob=0.5)
    for _ in range(5):
        out_image, out_mask = tf(image, mask)
        assert out_image.shape == (3, 32, 32)
        values = set(out_mask.unique().tolist())
        assert values <= {0, 1, 2, 3, 255}  # nearest interpolation: no blended label values
        agree = (out_image[0] * 3).round() == out_mask
        assert agree[out_mask != 255].float().mean() > 0.8  # image and mask moved together


def test_segmentation_eval_pads_to_multiple():
    image, mask = _seg_sample(50, 70)
    out_image, out_mask = segmentation_transforms(False)(image, mask)
    assert out_image.shape == (3, 64, 96) and out_mask.shape == (64, 96)
    assert (
        torch.equal(out_mask[:50, :70], mask)
        and (out_mask[50:] == 255).all()
        and (out_mask[:, 70:] == 255).all()
    )
    assert torch.equal(out_image[:, :50, :70], image) and (out_image[:, 50:] == 0).all()
    out_image, out_mask = segmentation_transforms(False, size_divisor=1)(image, mask)
    assert out_image.shape == (3, 50, 70)
    out_image, out_mask = segmentation_transforms(False, eval_size=25, size_divisor=0)(image, mask)
    assert out_image.shape == (3, 25, 35) and out_mask.shape == (25, 35)
    assert PadToMultiple(16)(image).shape == (3, 64, 80)


# ------------------------------------------------------------------------------------ batching


def test_create_aspect_ratio_groups():
    # k=2: edges 2 ** linspace(-1, 1, 5) = [0.5, 0.707, 1, 1.414, 2]
    assert create_aspect_ratio_groups([0.4, 0.6, 0.9, 1.0, 1.2, 1.5, 3.0], k=2) == [0, 1, 2, 3, 3, 4, 5]
    assert create_aspect_ratio_groups([0.4, 3.0], k=0) == [0, 0]


def test_grouped_batch_sampler():
    groups = [0, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0]
    batches = list(GroupedBatchSampler(SequentialSampler(range(11)), groups, batch_size=3))
    assert len(batches) == 11 // 3 == len(GroupedBatchSampler(SequentialSampler(range(11)), groups, 3))
    assert batches[:2] == [[0, 2, 4], [1, 3, 6]]
    assert all(len(b) == 3 and len({groups[i] for i in b}) == 1 for b in batches)
    torch.manual_seed(0)
    sampler = GroupedBatchSampler(RandomSampler(range(11)), groups, batch_size=2)
    batches = list(sampler)
    assert len(batches) == 5 and all(groups[a] == groups[b] for a, b in batches)


def test_grouped_batch_sampler_with_distributed_sampler():
    groups = [i % 3 for i in range(20)]
    per_rank = []
    for rank in range(2):
        ds = DistributedSampler(range(20), num_replicas=2, rank=rank, shuffle=True, seed=0)
        ds.set_epoch(1)
        batches = list(GroupedBatchSampler(ds, groups, batch_size=2))
        assert len(batches) == 5  # same count on every rank
        assert all(groups[a] == groups[b] for a, b in batches)
        per_rank.append({i for b in batches for i in b})
    assert not per_rank[0] & per_rank[1]  # ranks see disjoint images


def test_dataloader_with_collate(tmp_path):
    paths = make_shapes(tmp_path, num_train=4, num_val=0, image_size=64, seed=2)
    ds = CocoDetection(
        paths.coco_train_images, paths.coco_train_ann, transforms=detection_transforms(True, 48, 80)
    )
    groups = create_aspect_ratio_groups(ds.aspect_ratios(), k=2)
    sampler = GroupedBatchSampler(SequentialSampler(ds), groups, batch_size=2)
    batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=detection_collate))
    assert len(batches) == 2
    images, targets = batches[0]
    assert isinstance(images, list) and len(images) == 2 and images[0].shape == (3, 48, 48)
    assert [t["image_id"] for t in targets] == [1, 2]
    assert detection_collate([]) == ([], [])


@pytest.mark.parametrize("channels", [1, 4, 13])
def test_presets_work_for_any_channel_count(channels):
    """Flip, resize, crop and pad treat every channel alike and leave float values (even above 1) unscaled."""
    torch.manual_seed(1)
    pixels = torch.rand(channels, 32, 48) * 3.0  # float data outside [0, 1] must not be rescaled or clipped here
    image = tv_tensors.Image(pixels)
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[4.0, 4.0, 20.0, 30.0]]), format="XYXY", canvas_size=(32, 48))
    target = {"boxes": boxes, "labels": torch.tensor([1])}
    flipped, out = detection_transforms(True, min_size=None, hflip_prob=1.0)(image, target)
    assert torch.equal(flipped, pixels.flip(-1)) and out["boxes"].tolist() == [[28.0, 4.0, 44.0, 30.0]]
    resized, _ = detection_transforms(True, min_size=[16], max_size=64, hflip_prob=0.0)(image, target)
    assert resized.shape == (channels, 16, 24)
    mask = tv_tensors.Mask(torch.zeros(32, 48, dtype=torch.int64))
    cropped, cmask = segmentation_transforms(True, crop_size=40, scale_range=(0.8, 0.8), hflip_prob=0.0)(image, mask)
    assert cropped.shape == (channels, 40, 40) and cmask.shape == (40, 40)
    padded, pmask = segmentation_transforms(False, size_divisor=32)(image, mask)
    assert padded.shape == (channels, 32, 64) and torch.equal(padded[:, :, :48], pixels)
    assert (padded[:, :, 48:] == 0).all() and (pmask[:, 48:] == 255).all()
