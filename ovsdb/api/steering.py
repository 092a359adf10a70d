"""The config database API of steering policies."""

from mbxmodel.services import PolicyInfo
from ovsdb import validate
from ovsdb.api.common import (_address_sets, _Command, _find,
                              _middleboxes, _policies, _policy_info,
                              _policy_rows, _require, _set_rows,
                              _switches)
from ovsdb.errors import MbxError
from ovsdb.match import parse_match


class SteerAddCommand(_Command):
    def __init__(self, api, policy):
        super().__init__(api)
        self.policy = policy

    def run_idl(self, txn):
        policy = self.policy
        switch = _find(self.api, "Logical_Switch", policy.switch)
        if switch is None:
            raise MbxError(f"unknown logical switch '{policy.switch}'; "
                           "create it first (ls-add)")
        validate.check_policy(policy, _switches(self.api),
                              _middleboxes(self.api), _address_sets(self.api))
        validate.check_policy_unique(policy, _policies(self.api))
        _insert_policy(self.api, txn, switch, policy)


def _insert_policy(api, txn, switch, policy):
    row = txn.insert(api.tables["Steering_Policy"])
    row.logical_switch, row.priority, row.match = (
        switch, policy.priority, policy.match)
    row.tenant = switch.tenant
    row.address_sets = _set_rows(api, parse_match(policy.match))
    row.chain = {i: _require(api, "Middlebox", mb, "middlebox")
                 for i, mb in enumerate(policy.chain)}


class SteerDelCommand(_Command):
    def __init__(self, api, switch, priority, if_exists=False):
        super().__init__(api)
        self.switch = switch
        self.priority = priority
        self.if_exists = if_exists

    def run_idl(self, txn):
        if _find(self.api, "Logical_Switch", self.switch) is None:
            if self.if_exists:
                return
            raise MbxError(f"unknown logical switch '{self.switch}'; use "
                           "--if-exists to ignore a missing one")
        doomed = [row for row in _policy_rows(self.api, self.switch)
                  if self.priority is None or row.priority == self.priority]
        if not doomed and self.priority is not None and not self.if_exists:
            raise MbxError(f"logical switch '{self.switch}' has no steering "
                           f"policy at priority {self.priority}; use "
                           "--if-exists to ignore a missing one")
        for row in doomed:
            row.delete()


class ReplacePoliciesCommand(_Command):
    """Make the steering policies of ``switch`` exactly ``policies``
    (policies that stay keep their rows), without checks (see
    CheckFirewallCommand)."""

    def __init__(self, api, switch, policies):
        super().__init__(api)
        self.switch = switch
        self.policies = policies

    def run_idl(self, txn):
        switch = _find(self.api, "Logical_Switch", self.switch)
        if switch is None:
            raise MbxError(f"unknown logical switch '{self.switch}'; create "
                           "it first")
        wanted = list(self.policies)
        for row in _policy_rows(self.api, self.switch):
            policy = _policy_info(row)
            if policy in wanted:
                wanted.remove(policy)
            else:
                row.delete()
        for policy in wanted:
            _insert_policy(self.api, txn, switch, policy)


class SteeringApi:
    """MbxNb's steering policy methods."""

    def steer_add(self, switch, priority, match, chain):
        """``chain``: middleboxes of ``switch`` in order, as a sequence of
        names or "NAME,NAME"; "bypass" (or empty) for none."""
        policy = PolicyInfo(
            validate.name(switch, "logical switch name"),
            validate.steer_priority(priority), validate.match(match).text,
            validate.chain(chain))
        return SteerAddCommand(self, policy)

    def steer_del(self, switch, priority=None, if_exists=False):
        """Without ``priority``: every steering policy of ``switch``."""
        if priority is not None:
            priority = validate.steer_priority(priority)
        return SteerDelCommand(self, switch, priority, if_exists)

    def replace_policies(self, switch, policies):
        """Make ``switch``'s steering policies exactly ``policies``; follow
        a batch with ``check_firewall()``."""
        return ReplacePoliciesCommand(self, switch, tuple(policies))

    def steer_list(self, switch=None):
        """Sorted by switch, then descending priority."""
        return [p for p in self.snapshot().policies
                if switch is None or p.switch == switch]
