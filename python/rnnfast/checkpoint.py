"""Checkpoints: a model, its optimiser's state and the training position, in one safe file.

The file is a NumPy ``.npz`` archive read with ``allow_pickle=False``, so loading it never
runs code from the file. It holds ``params/<name>`` for every parameter,
``optim/<name>/<slot>`` for every optimiser state array, and ``__meta__``: UTF-8 JSON with the
format version, the rnnfast version, the model's configuration, the names, shapes and dtypes
of the arrays, the optimiser's hyperparameters, the step and epoch, the state of the model's
dropout generator (``rng_state``, when it has one; ``rank_rng_states``, every rank's, for a
checkpoint of data-parallel training), and free metadata.

Saving writes a temporary file beside the target, flushes it to disk, then renames it over
the target: a crash mid-save leaves the previous checkpoint in place. Under data-parallel
training, ``save(..., distributed=True)`` writes once, from rank 0, while the others wait.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "rnnfast-checkpoint"
FORMAT_VERSION = 1


class Checkpoint:
    """What ``load`` returns: the saved model, rebuilt, and what resuming its training needs.

    Attributes
    ----------
    model : RNN, LSTM, GRU, Linear, Embedding or Model
        A new model of the saved configuration holding the saved parameters, and the saved
        state of its dropout generator, so that a resumed run draws the masks the
        uninterrupted one did. Its ``params`` are new arrays: build the optimiser on them.
    optimizer_state : dict or None
        For ``load_state_dict`` of a new optimiser of the saved type over
        ``model.params``: its hyperparameters, step count and per-parameter state (Adam's
        moments, momentum buffers, ...). None when no optimiser was saved.
    schedule_state : dict or None
        For ``load_state_dict`` of a new schedule of the saved type; None when none was saved.
    step : int
        The ``step`` given to ``save``.
    epoch : int
        The ``epoch`` given to ``save``: pass it to ``fit`` as ``initial_epoch`` to continue
        the numbering and the shuffling of the uninterrupted run.
    metadata : dict
        The ``metadata`` given to ``save`` (empty if none).

    See Also
    --------
    rnnfast.load, rnnfast.save

    Examples
    --------
    Resume training from a checkpoint:

    >>> import numpy as np, rnnfast
    >>> x = np.zeros((8, 5, 3), dtype=np.float32)
    >>> y = np.zeros(8, dtype=np.int64)
    >>> model = rnnfast.Model(rnnfast.LSTM(3, 4, seed=0), rnnfast.Linear(4, 2, seed=1))
    >>> opt = rnnfast.optim.Adam(model.params, lr=1e-2)
    >>> _ = rnnfast.fit(model, opt, (x, y), loss="cross_entropy_last", progress=False)
    >>> rnnfast.save("run.npz", model, opt, epoch=1)
    >>> ckpt = rnnfast.load("run.npz")
    >>> model = ckpt.model
    >>> opt = rnnfast.optim.Adam(model.params, lr=1e-2)
    >>> opt.load_state_dict(ckpt.optimizer_state)
    >>> _ = rnnfast.fit(model, opt, (x, y), loss="cross_entropy_last", progress=False,
    ...                 initial_epoch=ckpt.epoch)
    """

    def __init__(self, model, optimizer_state, schedule_state, step, epoch, metadata):
        self.model = model
        self.optimizer_state = optimizer_state
        self.schedule_state = schedule_state
        self.step = step
        self.epoch = epoch
        self.metadata = metadata


def build(config):
    """A new model from the ``config()`` of an RNN, LSTM, GRU, Linear, Embedding or Model.

    Parameters
    ----------
    config : dict
        What the model's ``config()`` returned (JSON-friendly).

    Returns
    -------
    RNN, LSTM, GRU, Linear, Embedding or Model
        A new model with that configuration and freshly initialised parameters.

    Raises
    ------
    ValueError
        When ``config`` names no model class of rnnfast.
    """
    import rnnfast

    if not isinstance(config, dict):
        raise ValueError(f"a model configuration must be a dict, got {type(config).__name__}")
    if "recurrent" in config and "readout" in config:
        embedding = config.get("embedding")
        return rnnfast.Model(build(config["recurrent"]), build(config["readout"]),
                             embedding=None if embedding is None else build(embedding),
                             pool=config.get("pool"))
    args = dict(config)
    name = args.pop("class", None)
    cls = getattr(rnnfast, name, None) if isinstance(name, str) else None
    if name not in ("RNN", "LSTM", "GRU", "Linear", "Embedding") or cls is None:
        raise ValueError(f"unknown model class {name!r} in the configuration")
    args["dtype"] = np.dtype(args["dtype"])
    return cls(**args)


def save(path, model, optimizer=None, *, schedule=None, step=0, epoch=0, metadata=None,
         distributed=False):
    """Write a checkpoint of ``model`` (and ``optimizer``, ``schedule``) to ``path``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write, conventionally ``.npz``. A file already there is replaced only
        once the new one is complete.
    model : RNN, LSTM, GRU, Linear, Embedding or Model
        Its configuration (``config()``), parameters and dropout generator's state are saved.
    optimizer : rnnfast.optim.Optimizer, optional
        Its ``state_dict()`` is saved.
    schedule : rnnfast.optim.StepLR, ExponentialLR or CosineAnnealingLR, optional
        Its ``state_dict()`` is saved.
    step, epoch : int, default 0
        The position in training, returned by ``load`` as they were given.
    metadata : dict, optional
        Anything JSON can hold, returned by ``load``.
    distributed : bool, default False
        Under data-parallel training: see below.

    Raises
    ------
    OSError
        Naming ``path`` when it cannot be written (its directory missing or not writable,
        ``path`` a directory, the disk full); the file already at ``path`` is kept.

    Notes
    -----
    With ``distributed=True`` (data-parallel training under mpiexec), every rank calls
    ``save``: the ranks' parameters are compared by checksum (``RankMismatchError`` on every
    rank if they differ), every rank's dropout generator state is gathered into the file,
    rank 0 alone writes it, and the other ranks return only once the file is complete (and
    raise OSError if rank 0 could not write it). In a world of one it is the plain ``save``.
    """
    import rnnfast

    comm = None
    rank_rng_states = None
    if distributed:
        from . import distributed as dist

        comm = dist.world()
        if comm is not None and comm.Get_size() > 1:
            # Each rank drew dropout masks for its own rows, so its generator has its own
            # state: all of them are kept, for a resume on the same number of ranks.
            rank_rng_states = dist.check_params_agree(
                model.params, "when saving a checkpoint", comm,
                extra=getattr(model, "rng_state", None))
            if all(r is None for r in rank_rng_states):
                rank_rng_states = None
        else:
            comm = None

    arrays = {f"params/{k}": np.ascontiguousarray(v) for k, v in model.params.items()}
    optim_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        for name, slots in sd["state"].items():
            for slot, value in slots.items():
                arrays[f"optim/{name}/{slot}"] = value
        optim_meta = {k: sd[k] for k in ("type", "lr", "hyper", "step_count")}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "rnnfast_version": rnnfast.__version__,
        "model": model.config(), "step": int(step), "epoch": int(epoch),
        # dropout's generator: without it a resumed run would draw other masks
        "rng_state": getattr(model, "rng_state", None),
        "rank_rng_states": rank_rng_states,
        "metadata": metadata or {}, "optimizer": optim_meta,
        "schedule": schedule.state_dict() if schedule is not None else None,
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()},
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    if comm is None:
        _write(os.fspath(path), arrays)
        return
    failure = None
    if comm.Get_rank() == 0:
        try:
            _write(os.fspath(path), arrays)
        except Exception as e:  # noqa: BLE001 - told to the other ranks, then raised here
            failure = e
    # The broadcast is the barrier: no rank goes on (and perhaps reads the file) before
    # rank 0 has renamed the complete file into place, and a failed write fails every rank
    # instead of leaving them waiting in their next collective.
    error = comm.bcast(None if failure is None else f"{type(failure).__name__}: {failure}",
                       root=0)
    if failure is not None:
        raise failure
    if error is not None:
        raise OSError(f"rank 0 could not write the checkpoint {os.fspath(path)}: {error}")


def check_writable(path, name="path"):
    """Raise OSError, naming ``name`` and ``path``, unless a checkpoint can be written at
    ``path``: its directory exists and is writable, and ``path`` is not a directory.

    For a long run to check its checkpoint's place before it trains, not after.

    Parameters
    ----------
    path : str or os.PathLike
        Where the checkpoint will be written.
    name : str, default "path"
        The argument's name, for the message.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or os.curdir
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name} must name a file to write the checkpoint to, got the "
                                f"directory {path!r}; add a file name, e.g. "
                                f"{os.path.join(path, 'checkpoint.npz')!r}")
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{name} must be a file in an existing directory, got {path!r}, "
                                f"and the directory {folder!r} does not exist; create it first")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{name} must be a file in an existing directory, got "
                                 f"{path!r}, and {folder!r} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} must be a file in a directory you can write to, got "
                              f"{path!r}, and the directory {folder!r} is not writable")


def _naming(error, path):
    """``error`` (an OSError) told about ``path``, the user's, instead of the temporary file."""
    named = type(error)(f"cannot write the checkpoint {path!r}: "
                        f"{error.strerror or error}")
    named.errno = error.errno
    return named


def _write(path, arrays):
    """``arrays`` to an ``.npz`` at ``path`` through a temporary file and a rename."""
    check_writable(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rnnfast-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load(path, distributed=False):
    """Read a checkpoint written by ``save``; every name, shape and dtype is checked.

    Nothing in the file is unpickled: loading never runs code from it.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``save``.
    distributed : bool, default False
        Every rank of a data-parallel run may load the same file, on any number of ranks.
        With ``distributed=True``, a file saved by ``save(..., distributed=True)`` on as many
        ranks as there are now gives each rank its own dropout generator state back (so that
        the resumed run draws the uninterrupted run's masks); otherwise, and on another
        number of ranks, the model gets rank 0's.

    Returns
    -------
    Checkpoint
        ``.model`` (rebuilt from its saved configuration, with the saved parameters),
        ``.optimizer_state``, ``.schedule_state``, ``.step``, ``.epoch`` and ``.metadata``.
        To resume training, build the optimiser on ``.model.params``, give it
        ``.optimizer_state`` with ``load_state_dict``, and call ``fit`` with
        ``initial_epoch=.epoch`` (see ``Checkpoint``).

    Raises
    ------
    ValueError
        For a file that is not an rnnfast checkpoint, is truncated or corrupt, has another
        format version, or whose arrays do not match its model.
    """
    path = os.fspath(path)
    arrays = _read_arrays(path)
    meta = _read_meta(arrays, path)
    described = meta.get("arrays", {})
    for k, v in arrays.items():
        if k == "__meta__":
            continue
        want = described.get(k)
        if want is None or list(v.shape) != want["shape"] or v.dtype.str != want["dtype"]:
            raise ValueError(f"{path}: array {k!r} ({v.dtype}, {v.shape}) does not match the "
                             f"checkpoint's description {want}")
    missing = sorted(set(described) - set(arrays))
    if missing:
        raise ValueError(f"{path}: arrays {missing} are described but missing")

    try:
        model = build(meta["model"])
    except (TypeError, ValueError, KeyError, AttributeError, MemoryError) as e:
        raise ValueError(f"{path}: its model configuration cannot be built: {e}") from None
    params = model.params
    saved = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    if saved.keys() != params.keys():
        raise ValueError(f"{path}: parameter names {sorted(saved)} do not match the model's "
                         f"{sorted(params)}")
    for k, v in saved.items():
        if v.shape != params[k].shape or v.dtype != params[k].dtype:
            raise ValueError(f"{path}: parameter {k!r} is {v.dtype} {v.shape}, the model needs "
                             f"{params[k].dtype} {params[k].shape}")
        params[k][...] = v
    rng_state = meta.get("rng_state")
    if distributed and meta.get("rank_rng_states") is not None:
        from . import distributed as dist

        if len(meta["rank_rng_states"]) == dist.size():
            rng_state = meta["rank_rng_states"][dist.rank()]
    if rng_state is not None and hasattr(model, "rng_state"):
        try:
            model.rng_state = rng_state
        except (TypeError, ValueError, LookupError, OverflowError) as e:  # the file's JSON
            raise ValueError(f"{path}: its rng_state cannot be restored: {e}") from None

    optimizer_state = None
    if meta.get("optimizer") is not None:
        state = {name: {} for name in params}
        for k, v in arrays.items():
            if k.startswith("optim/"):
                name, _, slot = k[len("optim/"):].rpartition("/")
                if name not in state:
                    raise ValueError(f"{path}: optimiser state for unknown parameter {name!r}")
                state[name][slot] = v
        optimizer_state = {**meta["optimizer"], "state": state}
    return Checkpoint(model, optimizer_state, meta.get("schedule"), int(meta.get("step", 0)),
                      int(meta.get("epoch", 0)), meta.get("metadata", {}))


def _read_arrays(path):
    """Every array of the ``.npz`` at ``path``, read without trusting the file.

    Only what ``save`` writes is accepted: uncompressed (stored) ``.npy`` members, format
    1.0 or 2.0, plain numeric dtypes (no objects, so nothing is unpickled). Each member's
    header must agree with its size in the archive, and that with the archive's own size,
    before anything is allocated: a crafted header or a zip entry declaring a huge size is
    refused, not allocated. The CRC of every member is checked as it is read.
    """
    def bad(why):
        return ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): {why}")

    size = os.path.getsize(path)
    arrays = {}
    with open(path, "rb") as f:  # ours to close, whatever zipfile makes of the bytes
        try:
            with zipfile.ZipFile(f) as zf:
                for info in zf.infolist():
                    name = info.filename
                    if not name.endswith(".npy") or name[:-4] in arrays:
                        raise bad(f"unexpected member {name!r}")
                    if info.compress_type != zipfile.ZIP_STORED or \
                            info.file_size != info.compress_size or info.file_size > size:
                        raise bad(f"member {name!r} declares {info.file_size} bytes "
                                  f"(compression {info.compress_type}) in a file of {size}")
                    with zf.open(info) as member:
                        version = np.lib.format.read_magic(member)
                        if version == (1, 0):
                            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                        elif version == (2, 0):
                            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                        else:
                            raise bad(f"member {name!r} has .npy format {version}")
                        if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields:
                            raise bad(f"member {name!r} has dtype {dtype}, not a plain number")
                        count = 1
                        for n in shape:
                            count *= n
                        want = member.tell() + count * dtype.itemsize
                        if want != info.file_size:
                            raise bad(f"member {name!r}: its header describes {shape} "
                                      f"{dtype} ({want} bytes), the member holds "
                                      f"{info.file_size}")
                        data = member.read()  # checks the CRC at the end
                    if len(data) != count * dtype.itemsize:
                        raise bad(f"member {name!r} is short")
                    arrays[name[:-4]] = np.frombuffer(data, dtype=dtype).reshape(
                        shape, order="F" if fortran else "C").copy()
        except ValueError as e:
            if str(e).startswith(str(path)):
                raise
            raise bad(f"{type(e).__name__}: {e}") from None
        except Exception as e:  # noqa: BLE001 - any failure to parse the bytes is corruption
            if isinstance(e, MemoryError):
                raise
            raise bad(f"{type(e).__name__}: {e}") from None
    return arrays


def _read_meta(arrays, path):
    raw = arrays.get("__meta__")
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{path} is not an rnnfast checkpoint: it has no metadata")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: its metadata is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an rnnfast checkpoint")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {version!r}; "
                         f"this rnnfast reads version {FORMAT_VERSION}")
    # The JSON is the file's, not ours: every field of the type load relies on.
    types = {"model": dict, "arrays": dict, "metadata": dict, "step": int, "epoch": int,
             "optimizer": (dict, type(None)), "schedule": (dict, type(None)),
             "rng_state": (dict, type(None)), "rank_rng_states": (list, type(None))}
    for key, want in types.items():
        value = meta.get(key)
        if not isinstance(value, want) or isinstance(value, bool):
            raise ValueError(f"{path}: metadata field {key!r} must be "
                             f"{_type_names(want)}, got {type(value).__name__}")
    for k, d in meta["arrays"].items():
        if not (isinstance(d, dict) and isinstance(d.get("shape"), list)
                and all(type(n) is int for n in d["shape"]) and isinstance(d.get("dtype"), str)):
            raise ValueError(f"{path}: metadata 'arrays'[{k!r}] must be "
                             f"{{'shape': [ints], 'dtype': str}}, got {d!r}"[:300])
    states = meta["rank_rng_states"]
    if states is not None and not all(isinstance(r, (dict, type(None))) for r in states):
        raise ValueError(f"{path}: metadata 'rank_rng_states' must be a list of dicts or nulls")
    opt = meta["optimizer"]
    if opt is not None and not (isinstance(opt.get("type"), str) and
                                isinstance(opt.get("hyper"), dict) and
                                type(opt.get("step_count")) is int and
                                isinstance(opt.get("lr"), (int, float))):
        raise ValueError(f"{path}: metadata 'optimizer' must hold type (str), lr (float), "
                         f"hyper (dict) and step_count (int)")
    return meta


def _type_names(want):
    want = want if isinstance(want, tuple) else (want,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in want)
