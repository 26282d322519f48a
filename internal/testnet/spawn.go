package testnet

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// Pdeathsig fires when the *thread* that forked the child exits, not the
// process. Go destroys threads whose goroutine exits while locked (as
// Host.Do does, and netns-switching test code in general), so a child forked
// from an ordinary goroutine can be killed at a random moment. Children that
// should die with the test process are therefore all forked from one thread
// that stays locked, and so alive, for the life of the process.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

// startTied starts cmd so that it is SIGKILLed when the test process dies.
// It blocks until cmd has started.
func startTied(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: see above
			for r := range spawner.reqs {
				r.errc <- r.cmd.Start()
			}
		}()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	errc := make(chan error, 1)
	spawner.reqs <- spawnReq{cmd: cmd, errc: errc}
	return <-errc
}
