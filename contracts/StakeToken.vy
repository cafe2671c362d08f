#pragma version ^0.4.3
"""
@title StakeToken
@notice The ERC-20 token that FLock participants stake and that pays rewards.
        Standard interface and events (transfer, approve, transferFrom,
        allowance). The whole supply is minted to the deployer in the
        constructor and capped at 2**128: nobody can mint later, so no
        holder can inflate its stake or overflow a task's arithmetic.
"""

from ethereum.ercs import IERC20

implements: IERC20

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

name: public(String[32])
symbol: public(String[8])
decimals: public(uint8)
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
MAX_SUPPLY: constant(uint256) = 2 ** 128


@deploy
def __init__(name_: String[32], symbol_: String[8], supply: uint256):
    """@notice Create the token with its whole, fixed `supply`, held by the deployer."""
    assert supply <= MAX_SUPPLY, "init: supply must be at most 2**128"
    self.name = name_
    self.symbol = symbol_
    self.decimals = 18
    self.totalSupply = supply
    self.balanceOf[msg.sender] = supply
    log Transfer(sender=empty(address), receiver=msg.sender, value=supply)


@internal
def _move(sender: address, receiver: address, amount: uint256, what: String[16]):
    assert receiver != empty(address), concat(what, ": receiver is the zero address")
    have: uint256 = self.balanceOf[sender]
    assert have >= amount, concat(what, ": balance ", uint2str(have), " is below amount ", uint2str(amount))
    self.balanceOf[sender] = have - amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    """@notice Move `amount` from the caller to `receiver`."""
    self._move(msg.sender, receiver, amount, "transfer")
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    """@notice Let `spender` move up to `amount` of the caller's tokens."""
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    """@notice Move `amount` from `sender` to `receiver` within the caller's allowance."""
    allowed: uint256 = self.allowance[sender][msg.sender]
    assert allowed >= amount, concat("transferFrom: allowance ", uint2str(allowed), " is below amount ", uint2str(amount))
    if allowed != max_value(uint256):
        self.allowance[sender][msg.sender] = allowed - amount
    self._move(sender, receiver, amount, "transferFrom")
    return True
