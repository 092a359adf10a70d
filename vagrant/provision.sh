#!/bin/bash
# Provision one node of the Vagrant lab (run as root by vagrant's shell
# provisioner):  provision.sh ROLE NAME MGMT_IP CONTROLLER_IP [UNDERLAY_IP]
#
# The box already holds mbx's virtualenv (vagrant/mkbox); this installs the
# checkout's mbx from /tmp/mbx-stage (src.tar, wheels/, pki/: this node's
# key and certificate and the CA's certificate, uploaded by the Vagrantfile)
# with deploy/install.sh, writes /etc/mbx/*.conf and starts the role's units.
# No network access is needed.
set -euo pipefail
ROLE=$1 NAME=$2 MGMT_IP=$3 CONTROLLER_IP=$4 UNDERLAY_IP=${5:-}
STAGE=/tmp/mbx-stage
SRC=/opt/mbx-src

rm -rf "$SRC" && mkdir -p "$SRC"
tar -xf "$STAGE/src.tar" -C "$SRC"
"$SRC/deploy/install.sh" --role "$ROLE" --datapath netdev --wheelhouse "$STAGE/wheels"
install -d -m 0700 /etc/mbx/pki
install -m 0644 "$STAGE"/pki/*.pem /etc/mbx/pki/
install -m 0600 "$STAGE"/pki/*.key /etc/mbx/pki/

# KEY=VALUE in an /etc/mbx file.
setconf() {
    local file=/etc/mbx/$1 key=$2 value=$3
    if grep -q "^$key=" "$file"; then
        sed -i "s|^$key=.*|$key=$value|" "$file"
    else
        echo "$key=$value" >> "$file"
    fi
}

if [ "$ROLE" = controller ]; then
    setconf ovsdb.conf MBX_DB_CERT db1
    systemctl restart mbx-ovsdb@nb mbx-ovsdb@sb
    systemctl restart mbx-rbac mbx-northd mbx-controller
    echo "provision: $NAME: controller node up ($(systemctl is-active mbx-ovsdb@nb \
        mbx-ovsdb@sb mbx-rbac mbx-northd mbx-controller | tr '\n' ' '))"
    exit 0
fi

# A hypervisor.  The userspace datapath sends tunnel packets through an OVS
# bridge holding the underlay address: br-phy with the underlay NIC (the
# node's third interface, left unconfigured by vagrant).
[ -n "$UNDERLAY_IP" ] || { echo "provision: $NAME: no underlay address" >&2; exit 2; }
underlay_if=eth2
systemctl start openvswitch-switch
ovs-vsctl --may-exist add-br br-phy -- set bridge br-phy datapath_type=netdev \
    -- --may-exist add-port br-phy "$underlay_if"
ip link set "$underlay_if" up
cat > /etc/systemd/network/30-br-phy.network <<EOF
[Match]
Name=br-phy

[Network]
Address=$UNDERLAY_IP/24
LinkLocalAddressing=no
EOF
cat > /etc/systemd/network/30-$underlay_if.network <<EOF
[Match]
Name=$underlay_if

[Network]
LinkLocalAddressing=no
EOF
ip addr replace "$UNDERLAY_IP/24" dev br-phy
ip link set br-phy up
# TCP inside the overlay needs the offloads off on the userspace datapath's
# physical port.
ethtool -K "$underlay_if" tx off tso off gso off >/dev/null 2>&1 || true

setconf hypervisor.conf MBX_HOST "$NAME"
setconf hypervisor.conf MBX_ENCAP_IP "$UNDERLAY_IP"
setconf hypervisor.conf MBX_MGMT_IP "$MGMT_IP"
setconf hypervisor.conf MBX_NB "ssl:$CONTROLLER_IP:6641"
setconf hypervisor.conf MBX_SB "ssl:$CONTROLLER_IP:6642"
setconf hypervisor.conf MBX_CONTROLLERS "ssl:$CONTROLLER_IP:6653"
setconf hypervisor.conf MBX_DATAPATH netdev
systemctl daemon-reload
systemctl restart mbx-host-setup
systemctl restart mbx-chassis mbxd
echo "provision: $NAME: hypervisor up ($(systemctl is-active openvswitch-switch \
    mbx-host-setup mbx-chassis mbxd | tr '\n' ' '))"
