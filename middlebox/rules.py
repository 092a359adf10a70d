"""A middlebox's firewall rules, compiled for per-connection evaluation.

Semantics (docs/middlebox.md "Rule semantics"): per direction (``from-vm`` /
``to-vm``), the rules of the first tier by descending priority, then those
of the second tier; the first rule whose match selects the packet decides;
if none does, the default action decides.  ``tier-order`` says which tier
comes first (``provider-first``, the default, or ``tenant-first``).  Rules
of equal priority in one tier are tried in the order of their uuid (then
match text), so the order never depends on the order the DB returned them.

Bad config never raises here: a rule whose match, direction, action or tier
is invalid, an address set member that is not an IPv4 address/CIDR, an
unknown default action or tier order are skipped (or replaced by the
default) and described, one line each, in ``RuleSet.errors``.  A rule that
names an unknown or empty address set matches nothing in that field.
"""

from typing import Mapping, Optional, Sequence, Tuple

from ovsdb.errors import MbxError
from ovsdb.match import compile_match, parse_match, parse_network

DIRECTIONS = ("from-vm", "to-vm")
ACTIONS = ("allow", "deny", "reject")
TIERS = ("provider", "tenant")
TIER_ORDERS = {"provider-first": ("provider", "tenant"),
               "tenant-first": ("tenant", "provider")}
DEFAULT_TIER_ORDER = "provider-first"
DEFAULT_ACTION = "deny"


def rule_name(rule):
    """How errors and stats name a rule: its uuid, else its fields."""
    if rule.uuid:
        return "rule %s" % rule.uuid
    return "rule (%s priority %s %r)" % (rule.direction, rule.priority, rule.match)


class RuleSet:
    """The compiled rules of one middlebox.

    ``evaluate(direction, proto, src, dst, sport, dport)`` -> ``(action,
    rule)``: ``rule`` is the deciding ``RuleInfo``, or None when the default
    action decided.  Addresses are ints.
    """

    def __init__(self, rules: Sequence, address_sets: Mapping[str, Sequence[str]],
                 default_action: str = DEFAULT_ACTION,
                 tier_order: Optional[str] = DEFAULT_TIER_ORDER):
        self.errors = []
        if default_action not in ACTIONS:
            self.errors.append('default action "%s" is not allow, deny or reject: using %s'
                               % (default_action, DEFAULT_ACTION))
            default_action = DEFAULT_ACTION
        self.default_action = default_action
        if not tier_order:
            tier_order = DEFAULT_TIER_ORDER
        if tier_order not in TIER_ORDERS:
            self.errors.append('tier-order "%s" is not provider-first or tenant-first: '
                               'using %s' % (tier_order, DEFAULT_TIER_ORDER))
            tier_order = DEFAULT_TIER_ORDER
        self.tier_order = tier_order
        sets = self._parse_sets(address_sets or {})
        tiers = TIER_ORDERS[tier_order]
        ordered = {d: [] for d in DIRECTIONS}
        for rule in rules:
            compiled = self._compile(rule, sets)
            if compiled is not None:
                ordered[rule.direction].append((compiled, rule))
        for entries in ordered.values():
            entries.sort(key=lambda cr: (tiers.index(cr[1].tier), -cr[1].priority,
                                         cr[1].uuid, cr[1].match))
        self._ordered = {d: tuple(v) for d, v in ordered.items()}

    def _parse_sets(self, address_sets):
        out = {}
        for name, members in address_sets.items():
            nets = []
            if isinstance(members, str):
                members = (members,)
            for member in members or ():
                try:
                    nets.append(parse_network(member))
                except (MbxError, TypeError, ValueError, AttributeError) as err:
                    self.errors.append("address set %s: member skipped: %s" % (name, err))
            out[name] = tuple(nets)
        return out

    def _compile(self, rule, sets):
        what = None
        if rule.direction not in DIRECTIONS:
            what = 'direction "%s" is not from-vm or to-vm' % (rule.direction,)
        elif rule.action not in ACTIONS:
            what = 'action "%s" is not allow, deny or reject' % (rule.action,)
        elif rule.tier not in TIERS:
            what = 'tier "%s" is not provider or tenant' % (rule.tier,)
        elif not isinstance(rule.priority, int) or isinstance(rule.priority, bool):
            what = "priority %r is not an integer" % (rule.priority,)
        if what is None:
            try:
                return compile_match(parse_match(rule.match), sets)
            except MbxError as err:
                what = str(err)
            except Exception as err:     # noqa: BLE001 - bad config must never raise
                what = "%s: %s" % (type(err).__name__, err)
        self.errors.append("%s skipped: %s" % (rule_name(rule), what))
        return None

    def ordered(self, direction) -> Tuple:
        """The RuleInfos of ``direction`` in evaluation order (valid rules only)."""
        return tuple(rule for _, rule in self._ordered.get(direction, ()))

    def evaluate(self, direction, proto, src, dst, sport=0, dport=0):
        for compiled, rule in self._ordered[direction]:
            if compiled.matches(proto, src, dst, sport, dport):
                return rule.action, rule
        return self.default_action, None
