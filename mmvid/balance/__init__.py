"""BALANCERS: none (and ogm-ge, gblend, pmr, greedy, umt, atf). Imported explicitly to register them."""

from mmvid.balance.base import Balancer
from mmvid.registry import BALANCERS


@BALANCERS.register("none")
class NoBalance(Balancer):
    """No balancing."""
