#!/usr/bin/env bash
# Builds the Debian package, checks its contents with dpkg-deb, installs it
# with dpkg -i, runs the installed felhom-agent (--version, and check on the
# shipped sample configuration, which must name every value still to fill
# in), and purges it again. Run by .ci/run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "deb-check: $*" >&2; exit 1; }
version="0.0.0+ci$(date -u +%Y%m%d%H%M%S)"
out=$(mktemp -d)
trap 'rm -rf "$out"; dpkg --purge felhom-agent >/dev/null 2>&1 || true; rm -rf /var/lib/felhom-agent' EXIT
bash deploy/debian/build.sh "$version" "$out"
deb=$(ls "$out"/felhom-agent_*.deb)

info=$(dpkg-deb --info "$deb")
grep -q "^ Package: felhom-agent$" <<<"$info" || fail "package name: $info"
grep -q "^ Version: $version$" <<<"$info" || fail "package version, want $version: $info"
[[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" == "/etc/felhom-agent/agent.yaml" ]] || fail "conffiles is not /etc/felhom-agent/agent.yaml"
contents=$(dpkg-deb --contents "$deb")
for want in "-rwxr-xr-x root/root .* ./usr/bin/felhom-agent$" \
  "-rw-r--r-- root/root .* ./lib/systemd/system/felhom-agent.service$" \
  "-rw-r----- root/root .* ./etc/felhom-agent/agent.yaml$"; do
  grep -Eq -- "$want" <<<"$contents" || fail "contents lack $want:
$contents"
done
unit=$(dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./lib/systemd/system/felhom-agent.service)
for want in "^User=felhom-agent$" "^SupplementaryGroups=www-data$" "^StateDirectory=felhom-agent$" \
  "^ProtectSystem=strict$" "^NoNewPrivileges=yes$" "^PrivateTmp=yes$" \
  "^ExecStart=/usr/bin/felhom-agent run --config /etc/felhom-agent/agent.yaml$"; do
  grep -Eq "$want" <<<"$unit" || fail "unit lacks $want"
done

getent group www-data >/dev/null || groupadd --system --gid 33 www-data
dpkg -i "$deb"
installed=$(felhom-agent --version)
[[ "$installed" == "felhom-agent $version ("* ]] || fail "felhom-agent --version: $installed, want $version"
echo "$installed"
id -nG felhom-agent | tr ' ' '\n' | grep -qx www-data || fail "user felhom-agent is not in group www-data"
[[ "$(stat -c '%U:%G %a' /var/lib/felhom-agent)" == "felhom-agent:felhom-agent 750" ]] || fail "/var/lib/felhom-agent: $(stat -c '%U:%G %a' /var/lib/felhom-agent)"
[[ "$(stat -c '%U:%G %a' /etc/felhom-agent/agent.yaml)" == "root:felhom-agent 640" ]] || fail "/etc/felhom-agent/agent.yaml: $(stat -c '%U:%G %a' /etc/felhom-agent/agent.yaml)"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /lib/systemd/system/felhom-agent.service
fi

# The sample configuration, read as the agent's user: refused (exit 2) with
# every value still to fill in named.
set +e
check=$(runuser -u felhom-agent -- felhom-agent check --config /etc/felhom-agent/agent.yaml 2>&1)
rc=$?
set -e
echo "$check"
[[ $rc == 2 ]] || fail "check on the sample configuration exited $rc, want 2"
for field in host_id temporal.address proxmox.token_id proxmox.token_secret_file; do
  grep -q "config: $field: " <<<"$check" || fail "check does not name $field"
done
echo "deb-check: $deb passed"
