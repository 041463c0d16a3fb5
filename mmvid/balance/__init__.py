"""BALANCERS: none, agm, atf, gblend, greedy, inforeg, mla, mmpareto, ogm-ge, opm, pmr, relearn, remix, umt. Imported explicitly to register them."""

from mmvid.balance import agm, atf, gblend, greedy, inforeg, mla, mmpareto, ogm_ge, opm, pmr, relearn, remix, umt  # noqa: F401
from mmvid.balance.base import Balancer
from mmvid.registry import BALANCERS


@BALANCERS.register("none")
class NoBalance(Balancer):
    """No balancing."""

    min_modalities = 1
