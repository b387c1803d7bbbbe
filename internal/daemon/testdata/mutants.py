# Mutation pass over the lifecycle rules: breaks one rule at a time in the
# worktree, runs the daemon, store and server tests, restores the file.
# Usage (from anywhere): python3 internal/daemon/testdata/mutants.py [name-substring...]
# Do not edit those packages while it runs.
import subprocess, sys, os
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..'))
M=[
("vsock CID not from guest IP","internal/daemon/steps_start.go","	spec.VsockCID = cid\n","	spec.VsockCID = cid + 1\n"),
("default kill wait 5s","internal/daemon/service.go","DefaultKillTimeout     = 30 * time.Second","DefaultKillTimeout     = 5 * time.Second"),
("failed op journalled done","internal/daemon/journal.go","o.rec.Status, o.rec.Error = model.OpFailed, err.Error()","o.rec.Status, o.rec.Error = model.OpDone, err.Error()"),
("per-request stop timeout ignored","internal/daemon/stop.go","	if o.Timeout == 0 {\n		o.Timeout = s.cfg.GracefulTimeout","	if true {\n		o.Timeout = s.cfg.GracefulTimeout"),
("stop not detached","internal/daemon/stop.go",'"vm.stop", detached,','"vm.stop", !detached,'),
("restart stop half not detached","internal/daemon/stop.go","s.stopLocked(context.WithoutCancel(ctx), v, op, opts)","s.stopLocked(ctx, v, op, opts)"),
("delete not detached","internal/daemon/steps_delete.go",'"vm.delete", detached,','"vm.delete", !detached,'),
("delete skips disk removal","internal/daemon/steps_delete.go","return s.cfg.Storage.Remove(ctx, s.layout.VM(v.ID).RootDisk())","return nil"),
("stop escalates silently","internal/daemon/stop.go","		if !opts.Force {","		if false {"),
("force ignored","internal/daemon/stop.go","		if !opts.Force {","		if true {"),
("kill escalates silently","internal/daemon/stop.go","		return s.stillRunning(ctx, v, op, err, \"check","		return s.teardown(ctx, v, op, \"\")\n		return s.stillRunning(ctx, v, op, err, \"check"),
("start error without log","internal/daemon/steps_start.go","	if err != nil {\n		return v, s.recordStartFailure(ctx, v, op, err)\n	}\n	// Record the names","	if err != nil {\n		return v, err\n	}\n	// Record the names"),
("vsock path recomputed","internal/daemon/steps_start.go","	spec.VsockPath = vsockPath\n","	spec.VsockPath = \"\"\n"),
("undo not in reverse","internal/daemon/engine.go","	for i := len(done) - 1; i >= 0; i-- {","	for i := 0; i < len(done); i++ {"),
("teardown skips tap","internal/daemon/steps_start.go","Release: &Release{Held: func() bool { return sc.v.Runtime.Tap != \"\" },","Release: &Release{Held: func() bool { return false },"),
("teardown clears runtime on failure","internal/daemon/teardown.go","		v.State, v.LastError = model.StateError, \"runtime cleanup: \"+err.Error()","		v.State, v.LastError, v.Runtime = model.StateError, \"runtime cleanup: \"+err.Error(), model.Runtime{}"),
("teardown not detached","internal/daemon/teardown.go","context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)","context.WithTimeout(ctx, teardownTimeout)"),
("undo not detached","internal/daemon/engine.go","context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)","context.WithTimeout(ctx, undoTimeout)"),
("failed rollback clears runtime","internal/daemon/steps_start.go","	if !errors.As(cause, &se) || se.RolledBack() {","	if true {"),
("pid not recorded at spawn","internal/daemon/steps_start.go","		return s.store.UpdateVM(wctx, v)\n	}\n	if err := RunSteps","		_ = wctx\n		return nil\n	}\n	if err := RunSteps"),
("reconcile readopts a cut-short start","internal/daemon/reconcile.go","	if alive && v.State != model.StateStarting {","	if alive {"),
("create failure keeps record","internal/daemon/steps_create.go","			Undo: func(ctx context.Context) error { return s.store.DeleteVM(ctx, v.ID) }},","			Undo: func(ctx context.Context) error { return nil }},"),
("start of running VM relaunches","internal/daemon/steps_start.go","	if alive && v.State == model.StateRunning {","	if false {"),
("leftover not torn down before start","internal/daemon/steps_start.go","	if v.Runtime != (model.Runtime{}) {\n		// A VMM left","	if false {\n		// A VMM left"),
("reconcile reads every vm","internal/daemon/reconcile.go","s.store.ListVMsClaimingRuntime(ctx)","s.store.ListVMs(ctx)"),
]
only=sys.argv[1:]
res=[]
for name,f,old,new in M:
    if only and not any(o in name for o in only): continue
    src=open(f).read()
    if old not in src:
        res.append((name,"MISSING")); continue
    open(f,'w').write(src.replace(old,new,1))
    try:
        r=subprocess.run("go test -count=1 -timeout 120s ./internal/daemon/ ./internal/store/ ./internal/server/",shell=True,capture_output=True,text=True)
        out=r.stdout+r.stderr
        caught = r.returncode!=0
        fails=[l.strip() for l in out.splitlines() if l.startswith('--- FAIL') or 'build failed' in l or 'panic:' in l][:3]
        res.append((name,"CAUGHT" if caught else "SURVIVED", fails))
    finally:
        open(f,'w').write(src)
    print(res[-1],flush=True)
print(sum(1 for r in res if r[1]=="CAUGHT"),"/",len(res))
