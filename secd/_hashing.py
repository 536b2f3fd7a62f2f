"""Fingerprints for the cache key: of values (arguments) and of code (a function and what it calls).

Values are hashed from what they hold, never from `repr` (numpy shortens large arrays with "...",
so two different arrays would print alike): arrays and pandas objects from their buffers, with
dtype, shape and index; containers item by item; other objects through what pickle would save of
them (`__reduce_ex__`), hashed by these same rules. numpy and pandas are never imported here: an
argument can only be an array if its library is already loaded.

Code is hashed from bytecode (a comment or a moved line changes nothing), and the walk follows the
globals, closures, module attributes and function-level imports that the bytecode names, into every
function and class defined in the project; outside the project, code counts by library version.
"""

from __future__ import annotations

import dis
import functools
import importlib
import importlib.util
import pickle
import struct
import sys
import types
from dataclasses import dataclass
from typing import Any

import xxhash

from secd._project import Project, library_version

__all__ = ["Fingerprint", "UnhashableError"]

_LEN = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_COMPLEX = struct.Struct("<dd").pack

# Entries of a class __dict__ that carry no behaviour (or change with a moved line).
_CLASS_NOISE = frozenset(
    {
        "__module__",
        "__qualname__",
        "__doc__",
        "__dict__",
        "__weakref__",
        "__firstlineno__",
        "__static_attributes__",
    }
)


_BUILTIN_CALLABLES = (
    types.BuiltinFunctionType
    | types.MethodWrapperType
    | types.WrapperDescriptorType
    | types.MethodDescriptorType
    | types.ClassMethodDescriptorType
)


_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes})


class UnhashableError(TypeError):
    """A value the cache cannot fingerprint (a connection, a generator, a lock...)."""


@dataclass(frozen=True)
class _CodeSummary:
    digest: bytes
    names: frozenset[str]
    imports: tuple[tuple[str, int], ...]
    import_froms: frozenset[str]


_code_summaries: dict[types.CodeType, _CodeSummary] = {}
_MAX_CODE_SUMMARIES = 20_000


def _summary(code: types.CodeType) -> _CodeSummary:
    """Bytecode digest and referenced names of a code object and its nested ones (memoised)."""
    found = _code_summaries.get(code)
    if found is not None:
        return found
    digest = xxhash.xxh3_128()
    names = set(code.co_names)
    imports: list[tuple[str, int]] = []
    import_froms: set[str] = set()
    header = (
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
    )
    digest.update(struct.pack("<4q", *header))
    for field in (code.co_name, *code.co_names, "|", *code.co_varnames, "|"):
        _update_str(digest, field)
    for field in (*code.co_freevars, "|", *code.co_cellvars, "|"):
        _update_str(digest, field)
    digest.update(_LEN(len(code.co_code)))
    digest.update(code.co_code)
    table = getattr(code, "co_exceptiontable", b"")
    digest.update(_LEN(len(table)))
    digest.update(table)
    consts = Fingerprint(None)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            nested = _summary(const)
            consts.feed(b"K", nested.digest)
            names |= nested.names
            imports.extend(nested.imports)
            import_froms |= nested.import_froms
        else:
            consts.value(const)
    digest.update(consts.digest())
    if code.co_names:
        # `import x` inside a function: the level is the LOAD_CONST two before IMPORT_NAME.
        recent: list[Any] = []
        for instruction in dis.get_instructions(code):
            if instruction.opname == "LOAD_CONST":
                recent = [*recent[-1:], instruction.argval]
            elif instruction.opname == "IMPORT_NAME":
                level = recent[0] if len(recent) == 2 and isinstance(recent[0], int) else 0
                imports.append((instruction.argval, level))
            elif instruction.opname == "IMPORT_FROM":
                import_froms.add(instruction.argval)
    summary = _CodeSummary(
        digest=digest.digest(),
        names=frozenset(names),
        imports=tuple(imports),
        import_froms=frozenset(import_froms),
    )
    if len(_code_summaries) >= _MAX_CODE_SUMMARIES:
        _code_summaries.clear()
    _code_summaries[code] = summary
    return summary


def _update_str(digest: Any, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    digest.update(_LEN(len(data)))
    digest.update(data)


def _qualified(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or "?"
    return f"{module}:{name}"


class Fingerprint:
    """An incremental xxh3-128 fingerprint of values and code, plus the libraries they involve.

    With `project` None only plain values can be fed (used for code constants).
    """

    def __init__(self, project: Project | None) -> None:
        self.project = project
        self.libraries: set[str] = set()
        self._digest = xxhash.xxh3_128()
        # id -> position for shared and cyclic references; _alive keeps those ids from reuse.
        self._memo: dict[int, int] = {}
        self._alive: list[Any] = []
        self._walked: set[int] = set()
        self._module_names: set[tuple[int, str]] = set()

    # -- output -----------------------------------------------------------------------------

    def digest(self) -> bytes:
        """The 16-byte fingerprint of everything fed so far."""
        return self._digest.digest()

    def feed(self, tag: bytes, data: bytes | memoryview = b"") -> None:
        """Add one tagged, length-prefixed field."""
        if type(data) is bytes and len(data) < 4096:
            self._digest.update(tag + _LEN(len(data)) + data)
        else:
            self._digest.update(tag + _LEN(len(data)))
            self._digest.update(data)

    def _text(self, tag: bytes, text: str) -> None:
        self.feed(tag, text.encode("utf-8", "surrogatepass"))

    def _child(self) -> Fingerprint:
        child = Fingerprint(self.project)
        child.libraries = self.libraries
        return child

    def _library(self, module_name: str | None) -> None:
        if not module_name:
            return
        top = module_name.partition(".")[0]
        version = library_version(top)
        if version is not None:
            self.libraries.add(version)

    # -- values -----------------------------------------------------------------------------

    def value(self, obj: Any) -> None:
        """Add a value; raises UnhashableError for one that cannot be fingerprinted."""
        try:
            self._value(obj)
        except RecursionError:
            raise UnhashableError(
                f"a {type(obj).__name__} nested too deeply to fingerprint"
            ) from None

    def _value(self, obj: Any) -> None:
        kind = type(obj)
        if obj is None:
            self.feed(b"N")
        elif kind is bool:
            self.feed(b"?", b"\x01" if obj else b"\x00")
        elif kind is int:
            self.feed(b"i", obj.to_bytes((obj.bit_length() + 8) // 8 or 1, "little", signed=True))
        elif kind is float:
            self.feed(b"d", _DOUBLE(obj))
        elif kind is str:
            self._text(b"s", obj)
        elif kind is bytes:
            self.feed(b"b", obj)
        elif kind is complex:
            self.feed(b"j", _COMPLEX(obj.real, obj.imag))
        elif kind is tuple or kind is list:
            if self._seen(obj):
                return
            self.feed(b"t" if kind is tuple else b"l", _LEN(len(obj)))
            for item in obj:
                self._value(item)
        elif kind is dict:
            if self._seen(obj):
                return
            # Insertion order is kept: a function may depend on it, and a miss is never wrong.
            self.feed(b"D", _LEN(len(obj)))
            for key, item in obj.items():
                self._value(key)
                self._value(item)
        elif kind is set or kind is frozenset:
            if self._seen(obj):
                return
            self.feed(b"S" if kind is set else b"F", _LEN(len(obj)))
            for item_digest in sorted(self._digest_of(item) for item in obj):
                self._digest.update(item_digest)
        elif kind is bytearray:
            self.feed(b"B", obj)
        elif kind is memoryview:
            self._memoryview(obj)
        elif kind is range:
            self.feed(b"r", struct.pack("<3q", obj.start, obj.stop, obj.step))
        elif kind is slice:
            self.feed(b"/")
            self._value((obj.start, obj.stop, obj.step))
        elif obj is Ellipsis or obj is NotImplemented:
            self.feed(b"E", repr(obj).encode())  # singletons: the name is the whole value
        elif kind is types.CodeType:
            self.feed(b"K", _summary(obj).digest)
        elif self._array(obj) or self._pandas(obj):
            return
        elif isinstance(obj, type | types.FunctionType | types.ModuleType):
            self.reference(obj)
        elif isinstance(obj, types.MethodType):
            self.feed(b"h")
            self.reference(obj.__func__)
            self._value(obj.__self__)
        elif isinstance(obj, functools.partial):
            self.reference(obj)
        elif isinstance(obj, _BUILTIN_CALLABLES):
            owner = getattr(obj, "__self__", None)
            if owner is None or isinstance(owner, type | types.ModuleType):
                self.reference(obj)
            else:  # a bound method of a value, like `rows.append`: the value counts
                self._text(b"u", _qualified(obj))
                self._value(owner)
        elif kind is pickle.PickleBuffer:
            self._memoryview(obj.raw())
        elif _cached_function(obj) is not None:
            self.reference(obj)
        else:
            self._reduced(obj)

    def _seen(self, obj: Any) -> bool:
        """Whether obj was fed before (then a back-reference is fed); marks it otherwise."""
        position = self._memo.get(id(obj))
        if position is not None:
            self.feed(b"@", _LEN(position))
            return True
        self._memo[id(obj)] = len(self._memo)
        self._alive.append(obj)
        return False

    def _digest_of(self, obj: Any) -> bytes:
        child = self._child()
        child._value(obj)
        return child.digest()

    def _memoryview(self, view: memoryview) -> None:
        self._text(b"m", view.format)
        self.feed(b"m", struct.pack(f"<{len(view.shape or ())}q", *(view.shape or ())))
        self.feed(b"m", view if view.c_contiguous else view.tobytes())

    def _array(self, obj: Any) -> bool:
        numpy = sys.modules.get("numpy")
        if numpy is None:
            return False
        if isinstance(obj, numpy.ndarray) and type(obj) in (numpy.ndarray, numpy.memmap):
            self._ndarray(obj)
            return True
        if isinstance(obj, numpy.generic):
            self._dtype(obj.dtype)
            if obj.dtype.hasobject:
                self._value(obj.item())
            else:
                self.feed(b"g", obj.tobytes())
            return True
        if isinstance(obj, numpy.dtype):
            self._dtype(obj)
            return True
        return False

    def _dtype(self, dtype: Any) -> None:
        self._text(b"y", dtype.str)
        if dtype.fields is not None or dtype.subdtype is not None:
            # Structured and sub-array dtypes: dtype.str alone ("|V16") does not name the fields.
            self._value(dtype.descr)

    def _ndarray(self, array: Any) -> None:
        numpy = sys.modules["numpy"]
        self.feed(b"A", struct.pack(f"<{array.ndim}q", *array.shape))
        self._dtype(array.dtype)
        if array.dtype.hasobject:
            if array.dtype == object:
                self._object_array(array)
            else:
                self._reduced(array)
            return
        if array.size == 0 or array.itemsize == 0:
            return
        if array.flags.c_contiguous:
            data = array
        elif array.flags.f_contiguous:
            self.feed(b"T")  # hashed as its transpose: the same bytes in memory order
            data = array.T
        else:
            data = numpy.ascontiguousarray(array)
        self._digest.update(data.reshape(-1).view(numpy.uint8))

    def _object_array(self, array: Any) -> None:
        items = array.reshape(-1).tolist()
        if set(map(type, items)) <= {str}:
            # One pass for the common all-strings column; lengths keep the split unambiguous.
            numpy = sys.modules["numpy"]
            lengths = numpy.fromiter(map(len, items), dtype=numpy.int64, count=len(items))
            self.feed(b"O", lengths.view(numpy.uint8))
            self.feed(b"O", "".join(items).encode("utf-8", "surrogatepass"))
            return
        self.feed(b"o", _LEN(len(items)))
        for item in items:
            self._value(item)

    def _pandas(self, obj: Any) -> bool:
        pandas = sys.modules.get("pandas")
        if pandas is None:
            return False
        if isinstance(obj, pandas.DataFrame):
            if self._seen(obj):
                return True
            self.feed(b"P", _LEN(obj.shape[1]))
            self.reference(type(obj))
            self._pandas_index(obj.columns)
            self._pandas_index(obj.index)
            for position in range(obj.shape[1]):
                self._pandas_values(obj.iloc[:, position].array)
            self._pandas_extras(obj)
            return True
        if isinstance(obj, pandas.Series):
            if self._seen(obj):
                return True
            self.feed(b"Q")
            self.reference(type(obj))
            self._value(obj.name)
            self._pandas_index(obj.index)
            self._pandas_values(obj.array)
            self._pandas_extras(obj)
            return True
        if isinstance(obj, pandas.Index):
            self._pandas_index(obj)
            return True
        return False

    def _pandas_extras(self, obj: Any) -> None:
        self._value(dict(obj.attrs))
        self._value(obj.flags.allows_duplicate_labels)
        for name in getattr(type(obj), "_metadata", ()):  # subclasses' own state (e.g. a CRS)
            self._value(getattr(obj, name, None))

    def _pandas_index(self, index: Any) -> None:
        pandas = sys.modules["pandas"]
        self.reference(type(index))
        if isinstance(index, pandas.RangeIndex):
            self._value((index.start, index.stop, index.step, index.name))
        elif isinstance(index, pandas.MultiIndex):
            self._value(list(index.names))
            self.feed(b"X", _LEN(index.nlevels))
            for level, codes in zip(index.levels, index.codes, strict=True):
                self._pandas_index(level)
                self._ndarray(codes)
        else:
            self._value(index.name)
            self._pandas_values(index.array)

    def _pandas_values(self, values: Any) -> None:
        """A column's values: numpy-backed ones from their buffers, others as pickle sees them."""
        numpy = sys.modules["numpy"]
        if isinstance(values, numpy.ndarray):
            self._ndarray(values)
            return
        self.reference(type(values))
        self._value(values.dtype)
        inner = getattr(values, "_ndarray", None)  # datetime, string, categorical codes...
        if isinstance(inner, numpy.ndarray):
            self._ndarray(inner)
            return
        data, mask = getattr(values, "_data", None), getattr(values, "_mask", None)
        if isinstance(data, numpy.ndarray) and isinstance(mask, numpy.ndarray):  # nullable ints
            self._ndarray(data)
            self._ndarray(mask)
            return
        self._reduced(values)

    def _reduced(self, obj: Any) -> None:
        """Any other object, through what pickle would save of it."""
        if self._seen(obj):
            return
        kind = type(obj)
        try:
            reduced = obj.__reduce_ex__(5)
        except Exception as exc:
            raise UnhashableError(
                f"a {_qualified(kind)} cannot be fingerprinted: it cannot be pickled ({exc})"
            ) from None
        if isinstance(reduced, str):  # a module-level singleton, saved by name
            self.reference(kind)
            self._text(b"G", reduced)
            return
        if not isinstance(reduced, tuple) or len(reduced) < 2:
            raise UnhashableError(f"a {_qualified(kind)} has an unusual __reduce_ex__")
        self.feed(b"R", _LEN(len(reduced)))
        self.reference(kind)
        self.reference(reduced[0])
        self._value(reduced[1])
        self._value(reduced[2] if len(reduced) > 2 else None)
        if len(reduced) > 3 and reduced[3] is not None:
            self._value(list(reduced[3]))
        if len(reduced) > 4 and reduced[4] is not None:
            self._value(list(reduced[4]))

    # -- code -------------------------------------------------------------------------------

    def reference(self, obj: Any) -> None:
        """Add a function, class, module or other callable: by code if ours, else by version."""
        wrapped = _cached_function(obj)
        if wrapped is not None:
            obj = wrapped
        if isinstance(obj, types.FunctionType):
            self.function(obj)
        elif isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, types.ModuleType):
            self._text(b"M", obj.__name__)
            if not (self.project and self.project.contains_module(obj)):
                self._library(obj.__name__)
        elif isinstance(obj, types.MethodType):
            self.feed(b"h")
            self.reference(obj.__func__)
            self._lenient(obj.__self__)
        elif isinstance(obj, functools.partial):
            self.feed(b"p")
            self.reference(obj.func)
            self._value(obj.args)
            self._value(obj.keywords)
        elif isinstance(obj, _BUILTIN_CALLABLES):
            owner = getattr(obj, "__self__", None)
            self._text(b"u", _qualified(obj))
            if owner is None or isinstance(owner, types.ModuleType):
                self._library(getattr(obj, "__module__", None) or getattr(owner, "__name__", None))
            elif isinstance(owner, type):
                self.reference(owner)
            else:
                self._lenient(owner)
        else:
            self._lenient(obj)

    def function(self, func: types.FunctionType) -> None:
        """Add a function: its code and, if it is the project's, everything it reaches."""
        if id(func) in self._walked:
            self._text(b"^", _qualified(func))
            return
        self._walked.add(id(func))
        self._alive.append(func)
        if not self._ours(func):
            self._text(b"f", _qualified(func))
            self._library(func.__module__)
            return
        self._text(b"F", _qualified(func))
        self._code(func, func.__code__, func.__globals__)

    def _ours(self, func: types.FunctionType) -> bool:
        if self.project is None:
            return False
        if func.__module__ == "__main__":
            return True
        return self.project.contains_file(
            func.__code__.co_filename
        ) or self.project.contains_module_name(func.__module__)

    def _code(self, func: types.FunctionType, code: types.CodeType, namespace: dict) -> None:
        summary = _summary(code)
        self.feed(b"K", summary.digest)
        self._lenient(func.__defaults__)
        self._lenient(func.__kwdefaults__)
        for cell in func.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:  # a cell not filled yet
                self.feed(b"c")
                continue
            self._dependency(content)
        for name in sorted(summary.names):
            if name in namespace:
                self._text(b"g", name)
                self._dependency(namespace[name], summary)
        for name, level in summary.imports:
            module = self._import(name, level, namespace)
            if module is not None:
                self._text(b"I", module.__name__)
                self._dependency(module, summary)

    def _import(self, name: str, level: int, namespace: dict) -> types.ModuleType | None:
        """The module a function-level import names, importing it if it is ours and not loaded."""
        if level:
            package = namespace.get("__package__")
            if not package:
                return None
            try:
                name = importlib.util.resolve_name("." * level + name, package)
            except (ImportError, ValueError):
                return None
        module = sys.modules.get(name)
        if module is not None:
            return module
        top = name.partition(".")[0]
        if top not in sys.modules:
            try:
                spec = importlib.util.find_spec(top)
            except (ImportError, ValueError):
                spec = None
            if spec is None or not (self.project and self.project.contains_file(spec.origin)):
                self._library(top)  # a library imported on first use: its version, no import
                return None
        try:
            return importlib.import_module(name)
        except Exception:
            self._text(b"!", name)  # will fail in the function too; nothing more to follow
            return None

    def _dependency(self, obj: Any, summary: _CodeSummary | None = None) -> None:
        """Something a function refers to: follow code, add values, never fail."""
        if isinstance(obj, types.ModuleType):
            self._text(b"M", obj.__name__)
            if self.project and self.project.contains_module(obj):
                if summary is not None:
                    self._module_attributes(obj, summary)
            else:
                self._library(obj.__name__)
            return
        self._lenient(obj)

    def _module_attributes(self, module: types.ModuleType, summary: _CodeSummary) -> None:
        """`helpers.clean(...)`: the attributes of a project module that the code names."""
        namespace = vars(module)
        for name in sorted(summary.names):
            key = (id(module), name)
            if key in self._module_names:
                continue
            self._module_names.add(key)
            self._alive.append(module)
            submodule = name in summary.import_froms and hasattr(module, "__path__")
            if name not in namespace and submodule:  # `from pkg import sub`, sub not loaded yet
                self._import(f"{module.__name__}.{name}", 0, {})
            if name in namespace:
                self._text(b"a", f"{module.__name__}.{name}")
                self._dependency(namespace[name], summary)

    def _class(self, cls: type) -> None:
        if id(cls) in self._walked:
            self._text(b"^", _qualified(cls))
            return
        self._walked.add(id(cls))
        self._alive.append(cls)
        if not (self.project and self.project.contains_module_name(cls.__module__)):
            self._text(b"c", _qualified(cls))
            self._library(cls.__module__)
            return
        self._text(b"C", _qualified(cls))
        for base in cls.__bases__:
            self.reference(base)
        for name, member in vars(cls).items():
            if name in _CLASS_NOISE:
                continue
            self._text(b"k", name)
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if isinstance(member, property):
                for accessor in (member.fget, member.fset, member.fdel):
                    self._member(accessor)
            else:
                self._member(member)

    def _member(self, member: Any) -> None:
        if isinstance(member, types.FunctionType):
            # Methods of a project class are ours even when generated (dataclass __init__).
            if id(member) in self._walked:
                self._text(b"^", _qualified(member))
                return
            self._walked.add(id(member))
            self._alive.append(member)
            self._text(b"F", _qualified(member))
            self._code(member, member.__code__, member.__globals__)
        else:
            self._lenient(member)

    def _lenient(self, obj: Any) -> None:
        """A value code refers to: its fingerprint when it has one, else its type."""
        if type(obj) in _SCALARS:  # cannot fail: no child needed
            self._value(obj)
            return
        if isinstance(obj, types.FunctionType | type | types.ModuleType):
            self.reference(obj)
            return
        # A child, so that a value that fails half-way leaves nothing behind; the walked sets are
        # copied, not shared, so code first met inside a failed value is still fed later.
        child = self._child()
        child._walked = set(self._walked)
        child._module_names = set(self._module_names)
        try:
            child._value(obj)
        except (UnhashableError, RecursionError):
            self.feed(b"x")
            self.reference(type(obj))
            return
        self._walked = child._walked
        self._module_names = child._module_names
        self._alive.extend(child._alive)
        self.feed(b"v", child.digest())


def _cached_function(obj: Any) -> types.FunctionType | None:
    """The function behind a decorator object (like @secd.cache) that exposes __wrapped__."""
    if isinstance(obj, types.FunctionType | type):
        return None
    try:
        inner = obj.__dict__.get("__wrapped__") if hasattr(obj, "__dict__") else None
    except Exception:
        return None
    return inner if isinstance(inner, types.FunctionType) else None
