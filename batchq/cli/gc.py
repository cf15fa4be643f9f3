"""``batchq gc``: remove what ended runs left in git (``refs/batchq/<run>/``).

A run deletes its refs on the remote when it ends; a crashed orchestrator, a run left
going on the workers after Ctrl-C, or isolation's local result refs (kept for
``batchq diff``) stay until this command removes them. It says what it removed, and
what it kept and why.
"""

from __future__ import annotations

import typer

from batchq.cli.common import Context, JsonOpt, RootOpt, emit, emit_json
from batchq.errors import mask_url

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``gc`` to the CLI app."""

    @app.command()
    def gc(root: RootOpt = None, as_json: JsonOpt = False) -> None:
        """Remove the git refs (and dead workers' worktrees) of this root's ended runs,
        in the repository and on BATCHQ_GIT_REMOTE when set."""
        # lazy: git plumbing and the run layer stay out of start-up
        from batchq.run.remote import collect

        ctx = Context(root)
        done = collect(ctx.root, ctx.settings)
        url = mask_url(ctx.settings.git_remote) if ctx.settings.git_remote else None
        if as_json:
            emit_json(
                {
                    "local": done.local,
                    "remote": done.remote,
                    "remote_url": url,
                    "worktrees": [str(p) for p in done.worktrees],
                    "kept_live": done.live,
                    "kept_foreign": done.foreign,
                }
            )
            return
        lines: list[str] = []
        for run_id, refs in done.local.items():
            lines.append(f"removed {len(refs)} ref(s) of run {run_id} from the repository")
        for run_id, refs in done.remote.items():
            lines.append(f"removed {len(refs)} ref(s) of run {run_id} from {url}")
        lines += [f"removed worktree {p} (its worker is gone)" for p in done.worktrees]
        if done.live:
            lines.append(f"kept run(s) still running here: {', '.join(done.live)}")
        if done.foreign:
            lines.append(
                f"kept run(s) this root did not start (another checkout's?): "
                f"{', '.join(done.foreign)}"
            )
        if not (done.local or done.remote or done.worktrees):
            lines.insert(
                0,
                "nothing to remove: no ended run left refs"
                + (f" here or on {url}" if url else " here"),
            )
        emit(lines)
