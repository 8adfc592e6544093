"""The ``sceneforge`` command line.

Start-up stays cheap: ``sceneforge --help`` imports neither torch nor the engine. Each
subcommand is a dataclass in :mod:`sceneforge.commands` (parsed by tyro), imported only
when that command runs.
"""

from __future__ import annotations

import importlib
import os
import sys

#: name -> (class in sceneforge.commands, or ``module:Class`` for a verb defined elsewhere,
#: one-line help). The one registry of verbs.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("Info", "Load a scene (COLMAP, transforms.json or LLFF) and print a summary."),
    "reconstruct": ("Reconstruct", "Structure from motion: images in, a COLMAP model out."),
    "tracks": ("Tracks", "Build point tracks over all images of a folder."),
    "bundle-adjust": ("BundleAdjust", "Solve a BAL bundle-adjustment problem."),
    "train": ("Train", "Train a field on a posed scene; evaluate on held-out views."),
    "eval": ("Eval", "Held-out PSNR / SSIM of a trained run at full size (like ns-eval)."),
    "render": ("Render", "Render a camera path from a trained run."),
    "export": ("Export", "Export a trained run: point cloud, mesh, TSDF mesh or depth maps."),
    "complete": ("Complete", "Complete a trained run inside a 3D box or per-image masks."),
    "run": ("Run", "The main job: photos or a video in; planned, resumable, a report out."),
    "demo": ("Demo", "The main job on a procedural scene, with a quality check."),
    "view": ("View", "Open a scene or run folder in the browser viewer (localhost)."),
    "novel-views": (
        "sceneforge.free3d_commands:NovelViews",
        "Novel views of one object photo with a local Free3D model (then a field).",
    ),
    "free3d-train": (
        "sceneforge.free3d_commands:Free3DTrain",
        "Train or fine-tune a Free3D novel-view model on posed multi-view sets.",
    ),
    "human": ("sceneforge.human_commands:Human", "4D human capture from a video of a person."),
    "materials": (
        "sceneforge.hyperdreamer_commands:Materials",
        "A trained run to a relightable asset: mesh, materials, light, GLB.",
    ),
}


def _help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: sceneforge [--version] {" + ",".join(COMMANDS) + "} ...",
        "",
        "sceneforge: photos in, a complete editable 3D scene out.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `sceneforge COMMAND --help` for a command's options (--help-all: every"]
    lines += ["option with its notes); `sceneforge --version` prints the version."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sceneforge`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_help())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"sceneforge {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"sceneforge: unknown command {name!r}\n\n{_help()}", file=sys.stderr)
        return 2
    import tyro

    cls = command_class(name)
    if "--help-all" in rest:  # tyro's full help: every option with its whole docstring
        rest = ["--help"]
    elif "-h" in rest or "--help" in rest:  # one line per option, deep sections folded
        from sceneforge.cli_help import format_help

        print(format_help(f"sceneforge {name}", cls, cls.__doc__ or COMMANDS[name][1]))
        raise SystemExit(0)
    cmd = tyro.cli(
        cls,
        args=rest,
        prog=f"sceneforge {name}",
        config=(tyro.conf.PositionalMetavarFromFieldName,),
    )
    ok = False
    try:
        code = int(cmd.run() or 0)
        ok = True
        return code
    except Exception as e:
        if not _user_facing(e) or os.environ.get("SCENEFORGE_DEBUG"):
            raise
        print(f"sceneforge {name}: error: {e}", file=sys.stderr)
        return 1
    finally:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # under torchrun
            from sceneforge.fields.distributed import finish_command

            finish_command(ok)
            if ok:
                # The interpreter's teardown after a gloo group sometimes aborted a rank in a C++
                # destructor (SIGABRT; ~1 CLI run in 30 in CI) after its work was done and its
                # files closed: the ranks leave without it.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)


def command_class(name: str) -> type:
    """The dataclass of verb ``name`` (imported now: this loads the engine)."""
    target = COMMANDS[name][0]
    module, _, attr = target.rpartition(":")
    return getattr(importlib.import_module(module or "sceneforge.commands"), attr)


def version() -> str:
    """The installed package's version (from its metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("sceneforge")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _user_facing(e: BaseException) -> bool:
    """Errors that describe bad input or a machine fault (our named errors, OSError such as a
    full disk, an optional package missing): printed as one message; anything else is a bug
    and keeps its traceback."""
    return (
        isinstance(e, OSError)
        or _missing_optional_package(e)
        or any(c.__module__.startswith("sceneforge.") for c in type(e).__mro__)
    )


def _missing_optional_package(e: BaseException) -> bool:
    """Our lazy imports re-raise a failed optional import as ``ImportError("... needs X: pip
    install X") from`` the original, in a sceneforge module. A plain failed ``import`` (a
    ``ModuleNotFoundError``, or ``ImportError`` without a cause) is a bug or a broken install."""
    if type(e) is not ImportError or not isinstance(e.__cause__, ImportError):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("sceneforge.")


if __name__ == "__main__":
    sys.exit(main())
