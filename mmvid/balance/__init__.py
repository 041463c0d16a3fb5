"""BALANCERS: none, ogm-ge, gblend, pmr, greedy, umt, atf, inforeg. Imported explicitly to register them."""

from mmvid.balance import atf, gblend, greedy, inforeg, ogm_ge, pmr, umt  # noqa: F401
from mmvid.balance.base import Balancer
from mmvid.registry import BALANCERS


@BALANCERS.register("none")
class NoBalance(Balancer):
    """No balancing."""

    min_modalities = 1
