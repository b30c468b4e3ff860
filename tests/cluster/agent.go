package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// agentScript is the launcher agent, an ssh stand-in. ssh options are skipped: Open MPI passes
// none to a non-ssh agent, hydra passes -x; the ones ssh documents as taking an argument take
// theirs. As with ssh, the remaining words are joined by spaces and run by a shell, here in the
// VM: its network namespace, then new UTS, IPC and mount namespaces with the VM's hostname,
// boot_id, the cluster's hosts file and the VM's own /dev/shm. When the VM has a device,
// IVSHIM_REGION names it, plugged or not (a guest looks at its PCI devices either way: a VM
// being migrated has none until the destination plugs one); the region file behind a plugged
// one (a broker's device path is a symlink to the file) is bind-mounted into the VM's /dev/shm
// at its own path if it lives under /dev/shm, so the path and the symlink resolve in the VM to
// that very file and to no other region (one plugged later is linked there: VM.linkRegion). A
// VM registered with a broker also gets IVSHIM_VM_ID.
//
// %[1]s is the cluster prefix, %[2]s the case arms mapping a host argument to a VM name, %[3]s the
// quoted VM directory root and %[4]s the quoted hosts file.
const agentScript = `#!/bin/sh
# Launcher agent of emulated cluster %[1]s (generated): [ssh options] VM COMMAND...
while [ $# -gt 0 ]; do
	case $1 in
	--) shift; break ;;
	-[BbcDEeFIiJLlmOopQRSWw]) shift 2 ;;
	-*) shift ;;
	*) break ;;
	esac
done
if [ $# -lt 2 ]; then
	echo "ivshim agent %[1]s: usage: agent [ssh options] VM COMMAND..." >&2
	exit 255
fi
host=$1
shift
case $host in
%[2]s*)
	echo "ivshim agent %[1]s: unknown VM $host" >&2
	exit 255 ;;
esac
exec ip netns exec %[1]s-"$vm" unshare --uts --ipc --mount --propagation private -- sh -c '
set -e
hostname "$1"
mount --bind "$2/boot_id" /proc/sys/kernel/random/boot_id
mount --bind "$3" /etc/hosts
shm=/dev/shm/%[1]s-$1
if [ -f "$2/region" ]; then
	IVSHIM_REGION=$(cat "$2/region")
	export IVSHIM_REGION
	file=$(readlink -e "$IVSHIM_REGION" || :)
	if [ -n "$file" ]; then
		case $file in
		/dev/shm/*)
			f=$shm/${file#/dev/shm/}
			mkdir -p "${f%%/*}"
			[ -e "$f" ] || : >"$f"
			mount --bind "$file" "$f" ;;
		esac
	fi
fi
if [ -f "$2/vm_id" ]; then
	IVSHIM_VM_ID=$(cat "$2/vm_id")
	export IVSHIM_VM_ID
fi
mount --rbind "$shm" /dev/shm
shift 3
exec sh -c "$*"' ivshim-vm "$vm" %[3]s/"$vm" %[4]s "$@"
`

// writeAgent generates the cluster's launcher agent.
func (c *Cluster) writeAgent() error {
	var arms strings.Builder
	for _, vm := range c.VMs() {
		fmt.Fprintf(&arms, "%s|%s) vm=%s ;;\n", vm.Name, vm.Addr, vm.Name)
	}
	script := fmt.Sprintf(agentScript, c.Prefix, arms.String(), shellQuote(c.Dir+"/vm"), shellQuote(c.hostsFile()))
	if err := os.WriteFile(c.Agent, []byte(script), 0o755); err != nil {
		return fmt.Errorf("write agent: %w", err)
	}
	return nil
}

// shellQuote quotes s as one word for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Command returns a command that runs script with sh inside the VM through the launcher agent,
// as ssh would. It runs in its own process group and is killed with that group when ctx ends.
func (vm *VM) Command(ctx context.Context, script string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, vm.Host.cluster.Agent, vm.Name, script)
	cmd.Env = rootEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}
