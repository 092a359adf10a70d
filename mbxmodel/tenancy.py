"""Which northbound rows are not in force because their tenant columns
disagree: what OVSDB RBAC cannot check (ovsdb/rbac.py).

The ``mbx-tenant`` role lets a tenant's certificate write rows whose
``tenant`` column is its name; it cannot compare that column with another
row's.  So a client writing the database directly (not through mbxctl,
which copies every ``tenant`` from the switch) can leave rows that claim a
tenant they do not belong to.  Every reader that acts on the intent --
the logical controller's translation (``ryu_apps.translate``) and each
host's mbxd (``middlebox.confmon``) -- ignores them with the reason this
module gives; ``mbxctl show`` prints the reasons.

* a middlebox whose ``tenant`` is not its switch's;
* a tenant-tier rule (in ``Middlebox.rules``) whose ``tenant`` is not its
  middlebox's switch's, and a provider rule (``provider_rules``) with a
  ``tenant`` (a tenant may change that row);
* a steering policy whose ``tenant`` is not its switch's, or whose chain
  names a middlebox of another switch or an ignored middlebox.

Pure: plain values in, ``{key: reason}`` out, keys ("middlebox", name),
("rule", uuid), ("policy", switch, priority).
"""


def middlebox_problem(name, mb_tenant, switch, switch_tenant):
    """Why middlebox ``name`` is ignored, or None."""
    if mb_tenant != switch_tenant:
        return (f"middlebox '{name}' claims tenant '{mb_tenant}', but its "
                f"switch '{switch}' is tenant '{switch_tenant}''s")
    return None


def rule_problem(middlebox, tier, rule_tenant, switch_tenant):
    """Why a rule of ``tier`` of ``middlebox`` whose row says tenant
    ``rule_tenant`` is ignored, or None."""
    if tier == "provider":
        if rule_tenant:
            return (f"middlebox '{middlebox}': a provider rule claims tenant "
                    f"'{rule_tenant}'")
        return None
    if rule_tenant != switch_tenant:
        return (f"middlebox '{middlebox}': a tenant rule claims tenant "
                f"'{rule_tenant}', not '{switch_tenant}'")
    return None


def policy_problem(switch, priority, policy_tenant, switch_tenant, chain,
                   mb_switch, ignored_mbs):
    """Why the policy of ``switch`` at ``priority`` is ignored, or None.
    ``mb_switch``: {middlebox: its switch}; ``ignored_mbs``: names."""
    what = f"steering policy {switch} {priority}"
    if policy_tenant != switch_tenant:
        return (f"{what} claims tenant '{policy_tenant}', but the switch is "
                f"tenant '{switch_tenant}''s")
    for mb in chain:
        if mb in ignored_mbs:
            return f"{what}: its middlebox '{mb}' is ignored"
        if mb_switch.get(mb, switch) != switch:
            return (f"{what}: its middlebox '{mb}' serves switch "
                    f"'{mb_switch[mb]}'")
    return None


def ignored(switch_tenants, middleboxes, rules, policies):
    """{key: reason} of the rows not in force.

    ``switch_tenants``: {switch: tenant}; ``middleboxes``: (name, switch,
    tenant); ``rules``: (middlebox, tier, uuid, tenant); ``policies``:
    (switch, priority, tenant, chain)."""
    out = {}
    mb_switch = {}
    for name, switch, tenant in middleboxes:
        mb_switch[name] = switch
        why = middlebox_problem(name, tenant, switch,
                                switch_tenants.get(switch, ""))
        if why:
            out[("middlebox", name)] = why
    ignored_mbs = {key[1] for key in out}
    for mb, tier, uuid, tenant in rules:
        if mb in ignored_mbs or mb not in mb_switch:
            continue
        why = rule_problem(mb, tier, tenant,
                           switch_tenants.get(mb_switch[mb], ""))
        if why:
            out[("rule", uuid)] = why
    for switch, priority, tenant, chain in policies:
        why = policy_problem(switch, priority, tenant,
                             switch_tenants.get(switch, ""), chain,
                             mb_switch, ignored_mbs)
        if why:
            out[("policy", switch, priority)] = why
    return out
