"""A plain PyTorch training script, with rnnfast's LSTM swapped in by one line.

The task is examples/text_classifier.py's (which standard-library package a docstring comes
from, on text that ships with CPython), written the way a PyTorch user writes it: an
``nn.Module`` with ``nn.Embedding`` -> a 2-layer bidirectional LSTM with dropout, fed a
``PackedSequence`` -> each direction's last state -> ``nn.Linear``; ``DataLoader``,
``nn.CrossEntropyLoss``, ``torch.optim.Adam``, ``clip_grad_norm_``. The only rnnfast line is
the choice of the recurrent class:

    LSTM = rnnfast.torch.LSTM if args.cell == "rnnfast" else torch.nn.LSTM

    python examples/torch_drop_in.py                 # both, one after the other, same seed
    python examples/torch_drop_in.py --cell rnnfast  # only rnnfast.torch.LSTM

Both runs start from the same weights and draw the same batches; they part only by
rounding and by dropout's masks (each library draws its own), so their losses are close but
not equal. Needs PyTorch (``pip install "rnnfast[torch]"``).
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast.torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import text_classifier as data  # noqa: E402  (the docstrings, their tokens and the split)


class Classifier(nn.Module):
    def __init__(self, LSTM, vocabulary, embedding_dim, hidden, classes, dropout):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding_dim, padding_idx=data.PAD)
        self.lstm = LSTM(embedding_dim, hidden, num_layers=2, bidirectional=True,
                         dropout=dropout, batch_first=True)
        self.readout = nn.Linear(2 * hidden, classes)

    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.embedding(ids), lengths, batch_first=True,
                                      enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.readout(torch.cat([h_n[-2], h_n[-1]], dim=1))  # last layer, both ways


def tensors(split_, vocab):
    ids, labels, lengths = data.encode(*split_, vocab)
    return torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(lengths)


def accuracy(model, ids, labels, lengths):
    model.eval()
    with torch.no_grad():
        predicted = model(ids, lengths).argmax(dim=1)
    model.train()
    return float((predicted == labels).float().mean())


def train(cell, args, train_set, test_set, vocabulary):
    LSTM = rnnfast.torch.LSTM if cell == "rnnfast" else torch.nn.LSTM  # the one-line change
    name = f"{cell}{'.torch' if cell == 'rnnfast' else '.nn'}.LSTM"
    torch.manual_seed(args.seed)  # the constructors are torch.nn's: the same initial weights
    model = Classifier(LSTM, vocabulary, args.embedding_dim, args.hidden, len(data.PACKAGES),
                       args.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train_set),
                                         batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    # One untimed step first, so that neither run's time holds torch's first-call set-up.
    ids, labels, lengths = next(iter(loader))
    loss_fn(model(ids, lengths), labels).backward()
    optimizer.zero_grad()
    losses, start = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        total, count = 0.0, 0
        for ids, labels, lengths in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(ids, lengths), labels)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
        losses.append(total / count)
        print(f"  {name}  epoch {epoch}  train loss {losses[-1]:.3f}  "
              f"{time.perf_counter() - start:6.1f} s")
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(model, *test_set)
    print(f"  {name}: test accuracy {test_accuracy:.3f}, trained in "
          f"{seconds:.1f} s")
    return {"losses": losses, "seconds": seconds, "test_accuracy": test_accuracy}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=["both", "torch", "rnnfast"], default="both")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=None, help="default 4 (--quick: 1)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (rnnfast.torch follows it)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model, 300 samples and 1 epoch: seconds, for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.embedding_dim, args.hidden, args.max_tokens = 16, 16, 24
    if args.epochs is None:
        args.epochs = 1 if args.quick else 4
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    token_lists, labels = data.load_samples(args.max_tokens)
    if args.quick:
        keep = np.random.default_rng(args.seed).permutation(len(labels))[:300]
        token_lists, labels = [token_lists[i] for i in keep], labels[keep]
    (train_tokens, train_y), _, test_split = data.split(token_lists, labels, args.seed)
    vocab = data.build_vocabulary(train_tokens)
    train_set = tensors((train_tokens, train_y), vocab)
    test_set = tensors(test_split, vocab)
    print(f"{len(train_y)} docstrings to train on, {len(test_split[1])} to test; "
          f"{torch.get_num_threads()} thread(s)")
    cells = ["torch", "rnnfast"] if args.cell == "both" else [args.cell]
    results = {cell: train(cell, args, train_set, test_set, len(vocab) + 2) for cell in cells}
    if len(results) == 2:
        print(f"rnnfast.torch.LSTM trained {results['torch']['seconds'] / results['rnnfast']['seconds']:.2f}x "
              f"as fast as torch.nn.LSTM")
    return results


if __name__ == "__main__":
    main()
