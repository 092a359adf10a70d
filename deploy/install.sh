#!/bin/sh
# Install mbx from this checkout as systemd services.
#
#   deploy/install.sh --role controller|hypervisor|all [--root DIR]
#                     [--datapath system|netdev] [--libvirt] [--wheelhouse DIR]
#
# Puts mbx into a virtualenv /opt/mbx (the Python packages pinned by
# requirements.txt, installed offline from a wheelhouse), its helper scripts
# into /opt/mbx/libexec, the units into /etc/systemd/system, the role's
# configuration files into /etc/mbx (kept when present: they are the
# operator's) and enables the role's units.  It starts nothing: fill in
# /etc/mbx/*.conf and the certificates in /etc/mbx/pki first (docs/deploy.md),
# then start the units (`systemctl start UNIT...`) or reboot.  Safe to run
# again (an upgrade: the venv is updated, the configuration kept).
#
#   --role controller   mbx-ovsdb@nb, mbx-ovsdb@sb, mbx-rbac, mbx-northd,
#                       mbx-controller (needs Open vSwitch's ovsdb-server)
#   --role hypervisor   mbx-host-setup, mbx-chassis, mbxd (after Debian's
#                       openvswitch-switch)
#   --role all          both (one machine, e.g. a test box)
#   --root DIR          install into the Debian tree DIR (e.g. from
#                       deploy/mkroot) instead of this machine, through
#                       chroot; DIR must already hold python3-venv and
#                       openvswitch-switch
#   --datapath netdev   the host has no openvswitch kernel module: br-int
#                       uses the userspace datapath, and ovs-vswitchd is
#                       started without loading the module
#   --libvirt          (hypervisor) a KVM host with libvirt: the qemu hook
#                       (/etc/libvirt/hooks/qemu.d/50-mbx), the unit
#                       mbx-libvirt-events and /etc/mbx/libvirt-hook.conf;
#                       the venv also sees Debian's python3-libvirt
#   --wheelhouse DIR    install the Python packages from these wheels
#                       (default: build them with pip wheel: $MBX_PIP, else
#                       the checkout's .venv/bin/pip, else a temporary venv)
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
fail() { echo "install.sh: $*" >&2; exit 1; }

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROLE= ROOT= DATAPATH=system WHEELS= LIBVIRT=
while [ $# -gt 0 ]; do
    case $1 in
        --role) ROLE=${2:-}; shift 2 ;;
        --root) ROOT=${2:-}; shift 2 ;;
        --datapath) DATAPATH=${2:-}; shift 2 ;;
        --wheelhouse) WHEELS=${2:-}; shift 2 ;;
        --libvirt) LIBVIRT=1; shift ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
case $ROLE in controller|hypervisor|all) ;; *) fail "--role controller, hypervisor or all (not '$ROLE')" ;; esac
case $DATAPATH in system|netdev) ;; *) fail "--datapath system or netdev (not '$DATAPATH')" ;; esac
[ -z "$LIBVIRT" ] || [ "$ROLE" != controller ] || fail "--libvirt is for a hypervisor"
[ "$(id -u)" = 0 ] || fail "run as root"
if [ -n "$ROOT" ]; then
    ROOT=$(cd "$ROOT" && pwd) || fail "--root $ROOT: no such directory"
    [ "$ROOT" != / ] || ROOT=
fi
PREFIX=/opt/mbx
CONTROLLER_UNITS="mbx-ovsdb@nb.service mbx-ovsdb@sb.service mbx-rbac.service mbx-northd.service mbx-controller.service"
HYPERVISOR_UNITS="mbx-host-setup.service mbx-chassis.service mbxd.service"
case $ROLE in
    controller) UNITS=$CONTROLLER_UNITS CONFS="ovsdb northd controller" ;;
    hypervisor) UNITS=$HYPERVISOR_UNITS CONFS="hypervisor" ;;
    all) UNITS="$CONTROLLER_UNITS $HYPERVISOR_UNITS" CONFS="ovsdb northd controller hypervisor" ;;
esac

# Run a command on the target system (the tree through chroot, with a clean
# environment).
target() {
    if [ -n "$ROOT" ]; then
        chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
    else
        "$@"
    fi
}

# 1. Debian packages: this machine installs what is missing; a tree must
#    have been built with them (deploy/mkroot PACKAGE...).
PACKAGES="python3-venv"
case $ROLE in controller) PACKAGES="$PACKAGES openvswitch-common" ;;
              *) PACKAGES="$PACKAGES openvswitch-switch" ;; esac
[ -z "$LIBVIRT" ] || PACKAGES="$PACKAGES python3-libvirt"
missing=
for p in $PACKAGES; do
    target dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    [ -z "$ROOT" ] || fail "the tree $ROOT lacks Debian packages:$missing (build it with deploy/mkroot$missing ...)"
    echo "install.sh: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# 2. The wheels: mbx itself and its pinned dependencies.
STAGE=$(mktemp -d "${ROOT:-}/var/tmp/mbx-install.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
STAGED=${STAGE#"${ROOT:-}"}          # the same directory, seen from the target
if [ -z "$WHEELS" ]; then
    PIP=${MBX_PIP:-}
    if [ -z "$PIP" ] && [ -x "$SRC/.venv/bin/pip" ]; then PIP=$SRC/.venv/bin/pip; fi
    if [ -z "$PIP" ]; then
        python3 -m venv "$STAGE/buildenv" && PIP=$STAGE/buildenv/bin/pip
    fi
    WHEELS=$STAGE/wheels
    echo "install.sh: building wheels with $PIP"
    "$PIP" wheel -q --disable-pip-version-check -c "$SRC/requirements.txt" \
        -w "$WHEELS" "$SRC"
fi
mkdir -p "$STAGE/wheels"
[ "$WHEELS" = "$STAGE/wheels" ] || cp "$WHEELS"/*.whl "$STAGE/wheels/"
cp "$SRC/requirements.txt" "$STAGE/"
set -- "$STAGE"/wheels/mbx-*.whl
[ -e "$1" ] || fail "no mbx wheel in $WHEELS"
MBX_WHEEL=$STAGED/wheels/$(basename "$1")

# 3. The virtualenv, offline from the wheels; mbx itself always replaced
#    (its version does not change between commits).
if ! target "$PREFIX/bin/python3" -c 'import sys' 2>/dev/null; then
    echo "install.sh: creating the virtualenv $PREFIX"
    target python3 -m venv "$PREFIX"
fi
pipi() { target "$PREFIX/bin/pip" install -q --disable-pip-version-check --no-index \
             --find-links "$STAGED/wheels" "$@"; }
pipi -c "$STAGED/requirements.txt" mbx
pipi --no-deps --force-reinstall "$MBX_WHEEL"
mkdir -p "${ROOT:-}$PREFIX/libexec"
install -m 0755 "$SRC"/deploy/libexec/* "${ROOT:-}$PREFIX/libexec/"
for cmd in mbxctl mbx-pki mbx-rbac; do
    ln -sfn "$PREFIX/bin/$cmd" "${ROOT:-}/usr/local/bin/$cmd"
done

# 4. Units and configuration.
UNITDIR=${ROOT:-}/etc/systemd/system
install -m 0644 "$SRC"/deploy/systemd/*.service "$UNITDIR/"
DROPIN=$UNITDIR/ovs-vswitchd.service.d/mbx-userspace.conf
if [ "$DATAPATH" = netdev ] && [ "$ROLE" != controller ]; then
    mkdir -p "$(dirname "$DROPIN")"
    install -m 0644 "$SRC/deploy/systemd/ovs-vswitchd-userspace.conf" "$DROPIN"
fi
ETC=${ROOT:-}/etc/mbx
mkdir -p "$ETC"
install -d -m 0700 "$ETC/pki"
for c in $CONFS; do
    if [ -e "$ETC/$c.conf" ]; then
        echo "install.sh: keeping $ETC/$c.conf"
    else
        install -m 0644 "$SRC/deploy/etc/$c.conf" "$ETC/$c.conf"
        if [ "$c" = hypervisor ]; then
            sed -i "s/^MBX_DATAPATH=.*/MBX_DATAPATH=$DATAPATH/" "$ETC/$c.conf"
        fi
    fi
done
if [ -n "$LIBVIRT" ]; then
    # mbx-libvirt-events imports Debian's libvirt binding (python3-libvirt).
    sed -i 's/^include-system-site-packages = .*/include-system-site-packages = true/' \
        "${ROOT:-}$PREFIX/pyvenv.cfg"
    [ -e "$ETC/libvirt-hook.conf" ] || install -m 0644 "$SRC/deploy/etc/libvirt-hook.conf" "$ETC/"
    mkdir -p "${ROOT:-}/etc/libvirt/hooks/qemu.d"
    ln -sfn "$PREFIX/bin/mbx-libvirt-hook" "${ROOT:-}/etc/libvirt/hooks/qemu.d/50-mbx"
    UNITS="$UNITS mbx-libvirt-events.service"
fi
if [ -n "$ROOT" ]; then
    systemctl --root="$ROOT" --quiet enable $UNITS
else
    systemctl --quiet enable $UNITS
    if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
fi
echo "install.sh: mbx ($ROLE) installed in ${ROOT:-/}: $PREFIX, /etc/mbx, units $UNITS"
echo "install.sh: next: the certificates in /etc/mbx/pki and /etc/mbx/*.conf (docs/deploy.md), then start the units"
