"""BALANCERS (imported explicitly to register them): none,
agm, atf, cml, gblend, greedy, inforeg, lfm, mla, mmpareto, ogm-ge, opm, pmr, reconboost, relearn, remix, umt, valuate."""

from mmvid.balance import (  # noqa: F401
    agm, atf, cml, gblend, greedy, inforeg, lfm, mla, mmpareto,
    ogm_ge, opm, pmr, reconboost, relearn, remix, umt, valuate,
)
from mmvid.balance.base import Balancer
from mmvid.registry import BALANCERS


@BALANCERS.register("none")
class NoBalance(Balancer):
    """No balancing."""

    min_modalities = 1
