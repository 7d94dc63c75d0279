"""The small BatchNorm ResNet of the PyTorch yardsticks (siamese-gpu's `resnet-small`):
a 3×3 stem, one basic block per stage at widths w, 2w, 4w, global average pooling and a
dense embedding. Imported by modern_reference.py and bench_towers.py."""
import torch.nn as nn, torch.nn.functional as F


class Block(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); s.b1 = nn.BatchNorm2d(cout)
        s.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); s.b2 = nn.BatchNorm2d(cout)
        s.proj = None if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(s, x):
        h = F.relu(s.b1(s.c1(x))); h = s.b2(s.c2(h))
        return F.relu(h + (x if s.proj is None else s.proj(x)))

def resnet(w, embed=128):
    return nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, embed))
