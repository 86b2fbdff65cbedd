"""``Env``: what one deployment's code can reach, and nothing else.

The node builds one ``Env`` per deployment from its config: the opened bindings
(``env.KV``, ``env.DB``...), the ``[vars]`` and the secrets. User code reads it by
attribute (``env.API_VERSION``) or by key (``env["API_VERSION"]``); it cannot change it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, NoReturn

from edgerun.http import Secret

__all__ = ["Env"]


class Env:
    """Read-only attribute access to one deployment's bindings, vars and secrets.

    ``Env(bindings=None, vars=None, secrets=None)``: each a mapping of name -> value.
    Secret values are wrapped in ``edgerun.http.Secret`` (a ``str`` whose ``repr`` is
    masked), so ``repr(env)``, logs and tracebacks never show them. A name may appear
    only once across the three mappings (``ValueError`` otherwise).

    ``env.NAME`` and ``env["NAME"]`` return the value; an unknown name raises
    ``AttributeError`` / ``KeyError`` listing the names that exist. ``"NAME" in env``,
    ``iter(env)`` (names, in declaration order) and ``len(env)`` work as for a mapping.
    Setting or deleting anything raises ``AttributeError``.
    """

    __slots__ = ("_env_values",)

    _env_values: Mapping[str, Any]

    def __init__(
        self,
        bindings: Mapping[str, Any] | None = None,
        vars: Mapping[str, str] | None = None,  # the section name in edgerun.toml
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        values: dict[str, Any] = {}
        for kind, mapping in (("binding", bindings), ("var", vars), ("secret", secrets)):
            for name, value in (mapping or {}).items():
                if name in values:
                    raise ValueError(
                        f"env name {name!r} is declared twice (again as a {kind}); "
                        "bindings, vars and secrets share one namespace: rename one"
                    )
                values[name] = Secret(value) if kind == "secret" else value
        # A read-only view: user code holding ``env`` cannot add or replace a binding.
        object.__setattr__(self, "_env_values", MappingProxyType(values))

    def _missing(self, name: str) -> str:
        available = ", ".join(self._env_values) or "(none)"
        return (
            f"env has no binding or var named {name!r}; available: {available}. "
            "Declare it in edgerun.toml ([vars], a binding section) or with "
            "`edgerun secret put`."
        )

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails, so slots and methods still win. Dunder
        # probes (copy, pickle, IPython) must get a plain AttributeError, not a value.
        if name.startswith("__") or name == "_env_values":
            # _env_values: unset only mid-construction (copy, unpickling); looking it
            # up here again would recurse forever.
            raise AttributeError(name)
        try:
            return self._env_values[name]
        except KeyError:
            raise AttributeError(self._missing(name), name=name, obj=self) from None

    def __getitem__(self, name: str) -> Any:
        try:
            return self._env_values[name]
        except KeyError:
            raise KeyError(self._missing(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._env_values

    def __iter__(self) -> Iterator[str]:
        return iter(self._env_values)

    def __len__(self) -> int:
        return len(self._env_values)

    def __dir__(self) -> list[str]:
        return [*self._env_values, *super().__dir__()]

    def __copy__(self) -> Env:
        return self  # immutable: a copy would be identical

    def __deepcopy__(self, memo: dict[int, Any]) -> Env:
        return self  # bindings hold connections; they are shared, never duplicated

    def __reduce__(self) -> tuple[type[Env], tuple[dict[str, Any]]]:
        return (Env, (dict(self._env_values),))  # secrets stay Secret instances

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"env is read-only: cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"env is read-only: cannot delete {name!r}")

    def __repr__(self) -> str:
        # Strings (vars, and secrets whose repr is masked) are shown; bindings only by
        # type, because a binding's repr may include connection URLs with credentials.
        shown = []
        for name, value in self._env_values.items():
            text = repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"
            shown.append(f"{name}={text}")
        return f"Env({', '.join(shown)})"
