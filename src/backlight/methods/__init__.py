"""One module per method or family; importing this package imports every one of them, and so
registers every method: a new method is a new module here (or anywhere, imported before use)
whose function is decorated with :func:`backlight._registry.register`."""

import importlib
import pkgutil

__all__ = [info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")]

for _name in __all__:
    importlib.import_module(f"{__name__}.{_name}")
