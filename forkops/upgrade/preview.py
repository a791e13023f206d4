"""``forkops upgrade X.Y.Z --plan``: what a run would do, changing nothing at all.

Per repository: start, base, target branch, the commits to replay and the stops ``forkops check``
predicts (``forkops.predict``). The upstream objects are fetched into a temporary object
directory (:func:`planning.scratch_objects`) that is deleted afterwards: no ref, no config
value, no file of the repository changes, and no workspace lock is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from forkops.errors import BadInput
from forkops.git import Repo
from forkops.upgrade import planning
from forkops.workspace import Workspace


@dataclass(frozen=True)
class PlannedCommit:
    sha: str
    subject: str

    def as_json(self) -> dict[str, str]:
        return {"sha": self.sha, "subject": self.subject}


@dataclass(frozen=True)
class RepoPreview:
    repo: str
    plan: planning.RepoPlan | None
    refused: str | None
    commits: tuple[PlannedCommit, ...] = ()
    status: str | None = None  # "clean" | "conflict" | "drift" (the prediction)
    stop: dict[str, object] | None = None
    conflicts: tuple[str, ...] = ()
    anchors: tuple[dict[str, object], ...] = ()
    drift: tuple[dict[str, object], ...] = ()  # forkops.drift: removed upstream APIs the fork uses

    def as_json(self) -> dict[str, object]:
        data: dict[str, object] = {"repo": self.repo, "refused": self.refused}
        if self.plan is not None:
            data.update(self.plan.as_json())
            data["new_tags"] = sorted(self.plan.new_tags)
        data.update({"commits": [c.as_json() for c in self.commits], "status": self.status,
                     "stopped_at": self.stop, "conflicts": list(self.conflicts), "anchors": list(self.anchors),
                     "drift": list(self.drift)})
        return data


def preview(ws: Workspace, req: planning.Request, only: str | None = None) -> list[RepoPreview]:
    from forkops import predict
    from forkops.upgrade.state import active_run

    run = active_run(ws)
    if run is not None:
        raise BadInput(f"an upgrade to {run.version} is in progress; see `forkops status` (finish or abort it "
                       f"before planning another)")
    out = []
    for rc in ws.select(only):
        if not Repo(rc.path).is_repo():
            out.append(RepoPreview(rc.name, None, f"no clone at {rc.path} yet: `forkops upgrade` clones it "
                                                  f"from {rc.origin}"))
            continue
        pb = ws.playbook(rc)
        with planning.scratch_objects(Repo(rc.path)) as env:
            repo = Repo(rc.path, env=env)
            try:
                p = planning.plan_repo(repo, rc, pb, req)
            except BadInput as exc:
                out.append(RepoPreview(rc.name, None, exc.message))
                continue
            commits = tuple(PlannedCommit(i.sha, i.subject) for i in repo.commit_infos(list(p.picked)))
            patches = predict.load_patches(repo, list(p.picked))
            with predict.Simulator(repo, patches) as sim:
                result = sim.predict_many([(p.tag, p.onto_sha, req.version)], anchors=pb.anchors, workers=1,
                                          base=p.base_sha, drift=pb.drift)[0]
            out.append(RepoPreview(
                rc.name, p, None, commits, result.status,
                result.stopped_at.as_json() if result.stopped_at else None, tuple(result.conflict_paths),
                tuple(a.as_json() for a in result.anchors), tuple(d.as_json() for d in result.drift)))
    return out
