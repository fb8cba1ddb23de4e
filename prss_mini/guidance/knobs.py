"""A method's options, declared once: `sample` turns them into command-line options, `build_hook` fills defaults."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    name: str            # the keyword of the method's `build` (and `--name-with-dashes` on the command line)
    type: type           # float, int, bool (a switch) or list (Python only: no command-line option)
    default: object      # None: the method works it out (e.g. a threshold calibrated on the run)
    help: str


def with_defaults(method, knobs, given):
    """`given` (name -> value) completed with the defaults of `knobs`; a name that is not one of them is a
    ValueError that lists the method's knobs (a knob of another method is a mistake, not something to ignore)."""
    names = [k.name for k in knobs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"method {method!r} has no option {unknown}; its options: {names or 'none'}")
    return {k.name: given.get(k.name, k.default) for k in knobs}
