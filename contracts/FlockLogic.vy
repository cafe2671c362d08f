#pragma version ^0.4.3
"""
@title FlockLogic
@notice The pure half of FlockTask v2 (docs/PROTOCOL.md "Protocol v2"): the
        stake-weighted role draw and the settlement of one round. It holds no
        state and no tokens; FlockTask passes everything in and applies what
        comes back. Split out because FlockTask alone would exceed EIP-170's
        24,576 bytes. flock_jax/chain/draw.py and settlement.py are its
        Python model, tested against it to the wei.
"""

MAX_PARTICIPANTS: constant(uint256) = 1024
MAX_PROPOSERS: constant(uint256) = 64
MAX_VOTERS: constant(uint256) = 64
MAX_ROLES: constant(uint256) = 128
MAX_OPS: constant(uint256) = 256  # at most one reward and one slash per drawn account
BPS: constant(uint256) = 10000

VOTE_WHOLE: constant(uint256) = 0

ROLE_PROPOSER: constant(uint256) = 1
ROLE_VOTER: constant(uint256) = 2

OUTCOME_ACCEPTED: constant(uint256) = 1
OUTCOME_REJECTED: constant(uint256) = 2
OUTCOME_VOID: constant(uint256) = 3

SLASH_NO_PROPOSAL: constant(uint256) = 1
SLASH_REJECTED_PROPOSAL: constant(uint256) = 2
SLASH_NO_VOTE: constant(uint256) = 3
SLASH_WRONG_VOTE: constant(uint256) = 4
SLASH_WRONG_CANDIDATE: constant(uint256) = 5
SLASH_NO_REVEAL: constant(uint256) = 6
SLASH_DUPLICATE: constant(uint256) = 7
SLASH_INVALID: constant(uint256) = 8

KIND_REWARD: constant(uint256) = 1
KIND_SLASH: constant(uint256) = 2

MAX_ROUNDS: constant(uint256) = 100000
MAX_WINDOW: constant(uint256) = 100000    # blocks per phase (~2 weeks at 12 s)
MAX_HOLDINGS: constant(uint256) = 2 ** 128
REVEALED: constant(uint256) = 2
SHUFFLE_KEY: constant(uint256) = 2 ** 128  # keccak(seed ‖ SHUFFLE_KEY + i): shuffle step i
OFFSET_KEY: constant(uint256) = 2 ** 129   # keccak(seed ‖ OFFSET_KEY): systematic sampling offset  # state of a drawn account: 0 no commit, 1 committed, 2 revealed


@external
@pure
def check_params(total_rounds: uint256, num_proposers: uint256, num_voters: uint256, min_stake: uint256,
                 slash_bps: uint256, proposer_share_bps: uint256, vote_window: uint256, vote_mode: uint256,
                 selection_mode: uint256) -> bool:
    """
    @notice Revert unless FlockTask's parameters are in range. The bounds keep every
            transaction of a task under 30 M gas at 1024 participants (launch/bench_chain.py
            measures the worst case) and every reward nonzero for a funded pool.
    """
    assert total_rounds > 0 and total_rounds <= MAX_ROUNDS, "init: total_rounds must be in 1..100000"
    assert num_proposers > 0 and num_proposers <= MAX_PROPOSERS, "init: num_proposers must be in 1..64"
    assert num_voters > 0 and num_voters <= MAX_VOTERS, "init: num_voters must be in 1..64"
    assert min_stake > 0 and min_stake < MAX_HOLDINGS, "init: min_stake must be in 1..2**128-1"
    assert slash_bps <= BPS, "init: slash_bps must be at most 10000"
    assert proposer_share_bps <= BPS, "init: proposer_share_bps must be at most 10000"
    assert vote_window > 0 and vote_window <= MAX_WINDOW, "init: vote_window must be in 1..100000 blocks"
    assert vote_mode <= 1, "init: vote_mode must be 0 (whole) or 1 (per proposal)"
    assert selection_mode <= 1, "init: selection_mode must be 0 (uniform) or 1 (stake)"
    return True


@internal
@pure
def _shuffle(seed: bytes32, n: uint256) -> uint256[MAX_PARTICIPANTS]:
    """
    @notice The Fisher-Yates shuffle of 0..n-1 that `draw` states. An entry of the returned
            order is the index + 1, 0 meaning "never moved" (the index is its position): no
            initialisation pass.
    """
    order: uint256[MAX_PARTICIPANTS] = empty(uint256[MAX_PARTICIPANTS])
    for k: uint256 in range(n, bound=MAX_PARTICIPANTS):
        i: uint256 = unsafe_sub(unsafe_sub(n, 1), k)
        if i == 0:
            break
        j: uint256 = convert(keccak256(concat(seed, convert(unsafe_add(SHUFFLE_KEY, i), bytes32))), uint256) % unsafe_add(i, 1)
        oi: uint256 = order[i]
        if oi == 0:
            oi = unsafe_add(i, 1)
        oj: uint256 = order[j]
        if oj == 0:
            oj = unsafe_add(j, 1)
        order[i] = oj
        order[j] = oi
    return order


@internal
@pure
def _uniform(seed: bytes32, n: uint256, need: uint256) -> DynArray[uint256, MAX_ROLES]:
    """
    @notice `draw(seed, [1] * n, need)`, without the list of ones. With unit weights the
            running sum after position p is p + 1 and the points (u + j * n) // need are at
            least one apart, so point j picks the index at shuffled position
            (u + j * n) // need, and no seat is left over.
    """
    assert 0 < n and n <= MAX_PARTICIPANTS and need <= n, "draw: not enough weight to draw from"
    order: uint256[MAX_PARTICIPANTS] = self._shuffle(seed, n)
    u: uint256 = convert(keccak256(concat(seed, convert(OFFSET_KEY, bytes32))), uint256) % n
    picked: DynArray[uint256, MAX_ROLES] = []
    for j: uint256 in range(need, bound=MAX_ROLES):
        p: uint256 = unsafe_div(unsafe_add(u, unsafe_mul(j, n)), need)
        idx: uint256 = order[p]  # index + 1, or 0: never moved (`_shuffle`)
        picked.append(p if idx == 0 else unsafe_sub(idx, 1))
    return picked


@external
@pure
def pick(seed: bytes32, weights: DynArray[uint256, MAX_PARTICIPANTS], n: uint256, need: uint256) -> DynArray[uint256, MAX_ROLES]:
    """
    @notice FlockTask's draw: `draw(seed, weights, need)`, or with no weights the uniform
            draw over n, `draw(seed, [1] * n, need)`, computed without the list of ones.
    """
    if len(weights) == 0:
        return self._uniform(seed, n, need)
    assert len(weights) == n, "draw: n is not the number of weights"
    return self._draw(seed, weights, need)


@external
@pure
def draw(seed: bytes32, weights: DynArray[uint256, MAX_PARTICIPANTS], need: uint256) -> DynArray[uint256, MAX_ROLES]:
    """@notice See `_draw`."""
    return self._draw(seed, weights, need)


@internal
@pure
def _draw(seed: bytes32, weights: DynArray[uint256, MAX_PARTICIPANTS], need: uint256) -> DynArray[uint256, MAX_ROLES]:
    """
    @notice `need` distinct indices into `weights` (all > 0, need <= len), in a random order.
            1. Shuffle the indices (Fisher-Yates, step i uses keccak256(seed ‖ uint256(2**128 + i))).
            2. Systematic sampling proportional to weight over the shuffled order: with
               W = sum of weights and u = keccak256(seed ‖ uint256(2**129)) % W, point j
               (j < need) is (u + j * W) // need; an index is picked when a point falls in
               its stretch of the running sum. An index of weight w <= W / need is picked
               with probability exactly need * w / W.
            3. Seats left over (an index holding several points keeps one seat) are filled
               by successive sampling proportional to weight among the rest: pick k uses
               keccak256(seed ‖ uint256(k)) % remaining total (a Fenwick tree in memory).
    """
    # Same picks as the plain statement above (flock_jax/chain/draw.py); written for the EVM:
    # fixed arrays (no appends), the shuffle shared with `_uniform`, and no copy of
    # `weights` (the leftover tree is built from it and the picked indices taken out).
    n: uint256 = len(weights)
    assert need <= n, "draw: not enough weight to draw from"
    total: uint256 = 0
    for w: uint256 in weights:
        total += w
    order: uint256[MAX_PARTICIPANTS] = self._shuffle(seed, n)
    assert total > 0, "draw: not enough weight to draw from"
    u: uint256 = convert(keccak256(concat(seed, convert(OFFSET_KEY, bytes32))), uint256) % total
    picked: DynArray[uint256, MAX_ROLES] = []
    cum: uint256 = 0
    pt: uint256 = 0
    nxt: uint256 = u // need  # point pt, (u + pt * total) // need; u < total, pt <= need
    for p: uint256 in range(n, bound=MAX_PARTICIPANTS):
        idx: uint256 = order[p]  # index + 1, or 0: never moved (`_shuffle`)
        idx = p if idx == 0 else unsafe_sub(idx, 1)
        cum = unsafe_add(cum, weights[idx])
        if nxt < cum:
            picked.append(idx)
            for _: uint256 in range(MAX_ROLES):
                pt = unsafe_add(pt, 1)
                if pt >= need:
                    break
                nxt = unsafe_div(unsafe_add(u, unsafe_mul(pt, total)), need)
                if nxt >= cum:
                    break
            if pt >= need:
                break
    if len(picked) == need:
        return picked

    # fill the seats left over, in proportion to weight among the indices not picked
    tree: uint256[MAX_PARTICIPANTS + 1] = empty(uint256[MAX_PARTICIPANTS + 1])
    for i: uint256 in range(1, n + 1, bound=MAX_PARTICIPANTS):
        tree[i] = unsafe_add(tree[i], weights[unsafe_sub(i, 1)])
        j: uint256 = unsafe_add(i, i & unsafe_sub(0, i))
        if j <= n:
            tree[j] = unsafe_add(tree[j], tree[i])
    left: uint256 = total
    for idx: uint256 in picked:
        x: uint256 = weights[idx]
        left = unsafe_sub(left, x)
        i: uint256 = unsafe_add(idx, 1)
        for _: uint256 in range(11):
            if i > n:
                break
            tree[i] = unsafe_sub(tree[i], x)
            i = unsafe_add(i, i & unsafe_sub(0, i))
    top: uint256 = 1
    for _: uint256 in range(11):
        if top * 2 > n:
            break
        top *= 2
    for k: uint256 in range(len(picked), need, bound=MAX_ROLES):
        rem: uint256 = convert(keccak256(concat(seed, convert(k, bytes32))), uint256) % left
        pos: uint256 = 0
        step: uint256 = top
        for _: uint256 in range(11):
            if step == 0:
                break
            if pos + step <= n and tree[pos + step] <= rem:
                pos += step
                rem -= tree[pos]
            step = step >> 1
        picked.append(pos)
        x: uint256 = weights[pos]
        left = unsafe_sub(left, x)
        i: uint256 = pos + 1
        for _: uint256 in range(11):
            if i > n:
                break
            tree[i] = unsafe_sub(tree[i], x)
            i = unsafe_add(i, i & unsafe_sub(0, i))
    return picked


@external
@pure
def settle(
    vote_mode: uint256,
    reward: uint256,
    rho: uint256,
    lam: uint256,
    global_hash: bytes32,
    p_state: DynArray[uint256, MAX_PROPOSERS],
    p_hash: DynArray[bytes32, MAX_PROPOSERS],
    p_stake: DynArray[uint256, MAX_PROPOSERS],
    v_state: DynArray[uint256, MAX_VOTERS],
    v_stake: DynArray[uint256, MAX_VOTERS],
    v_cand: DynArray[bytes32, MAX_VOTERS],
    v_approve: DynArray[bool, MAX_VOTERS],
    v_bits: DynArray[uint256, MAX_VOTERS],
    v_invalid: DynArray[uint256, MAX_VOTERS],
) -> (bytes32[2], uint256[7], int256, DynArray[uint256, MAX_OPS], DynArray[uint256, MAX_OPS], DynArray[int256, MAX_PROPOSERS]):
    """
    @notice Settle one round (PROTOCOL.md v2 step 6). Returns
            ([candidate, new global hash],
             [outcome, approve stake, reject stake, accepted bits, invalid bits, duplicate bits, valid proposals],
             tally, ops (who << 16 | kind << 8 | code; who < P is proposers[who], else voters[who - P]),
             op amounts, per-proposal tallies).
    """
    n_p: uint256 = len(p_state)
    n_v: uint256 = len(v_state)
    committee: uint256 = 0
    revealed_stake: uint256 = 0
    n_votes: uint256 = 0
    for j: uint256 in range(n_v, bound=MAX_VOTERS):
        committee += v_stake[j]
        if v_state[j] == REVEALED:
            revealed_stake += v_stake[j]
            n_votes += 1

    # duplicates, invalid flags (strict majority of the committee's stake), valid proposals
    dup_bits: uint256 = 0
    inv_bits: uint256 = 0
    any_revealed: bool = False
    n_valid: uint256 = 0
    valid_total: uint256 = 0
    for i: uint256 in range(n_p, bound=MAX_PROPOSERS):
        if p_state[i] != REVEALED:
            continue
        any_revealed = True
        for k: uint256 in range(n_p, bound=MAX_PROPOSERS):
            if k != i and p_state[k] == REVEALED and p_hash[k] == p_hash[i]:
                dup_bits |= 1 << i
                break
        if dup_bits & (1 << i) != 0:
            continue
        flagged: uint256 = 0
        for j: uint256 in range(n_v, bound=MAX_VOTERS):
            if v_state[j] == REVEALED and (v_invalid[j] >> i) & 1 == 1:
                flagged += v_stake[j]
        if flagged * 2 > committee:
            inv_bits |= 1 << i
            continue
        n_valid += 1
        valid_total += p_stake[i]

    ops: DynArray[uint256, MAX_OPS] = []
    amounts: DynArray[uint256, MAX_OPS] = []
    tallies: DynArray[int256, MAX_PROPOSERS] = []
    cand: bytes32 = empty(bytes32)
    g: bytes32 = global_hash
    outcome: uint256 = OUTCOME_VOID
    yes: uint256 = 0
    no: uint256 = 0
    acc_bits: uint256 = 0

    if vote_mode == VOTE_WHOLE:
        # the candidate: the hash named by a strict majority of the revealed voting stake
        if n_valid > 0 and n_votes > 0:
            for j: uint256 in range(n_v, bound=MAX_VOTERS):
                if v_state[j] != REVEALED:
                    continue
                named: uint256 = 0
                for k: uint256 in range(n_v, bound=MAX_VOTERS):
                    if v_state[k] == REVEALED and v_cand[k] == v_cand[j]:
                        named += v_stake[k]
                if named * 2 > revealed_stake:
                    cand = v_cand[j]
                    break
        if cand != empty(bytes32):
            for j: uint256 in range(n_v, bound=MAX_VOTERS):
                if v_state[j] == REVEALED and v_cand[j] == cand:
                    if v_approve[j]:
                        yes += v_stake[j]
                    else:
                        no += v_stake[j]
            if yes * 2 > committee:
                outcome = OUTCOME_ACCEPTED
                g = cand
                acc_bits = 1
            elif no * 2 > committee:
                outcome = OUTCOME_REJECTED
        p_pot: uint256 = reward * rho // BPS
        for i: uint256 in range(n_p, bound=MAX_PROPOSERS):
            s: uint256 = p_stake[i]
            if p_state[i] == 0:
                ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_NO_PROPOSAL)
                amounts.append(s * lam // BPS)
            elif p_state[i] == 1:
                ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_NO_REVEAL)
                amounts.append(s * lam // BPS)
            elif dup_bits & (1 << i) != 0:
                ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_DUPLICATE)
                amounts.append(s * lam // BPS)
            elif inv_bits & (1 << i) != 0:
                ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_INVALID)
                amounts.append(s * lam // BPS)
            elif outcome == OUTCOME_ACCEPTED:
                amt: uint256 = p_pot * s // valid_total
                if amt > 0:
                    ops.append((i << 16) | (KIND_REWARD << 8) | ROLE_PROPOSER)
                    amounts.append(amt)
            elif outcome == OUTCOME_REJECTED:
                ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_REJECTED_PROPOSAL)
                amounts.append(s * lam // BPS)
        v_pot: uint256 = reward - p_pot
        win: uint256 = yes
        if outcome == OUTCOME_REJECTED:
            v_pot = reward
            win = no
        for j: uint256 in range(n_v, bound=MAX_VOTERS):
            if not any_revealed:
                break
            s: uint256 = v_stake[j]
            who: uint256 = (n_p + j) << 16
            if v_state[j] != REVEALED:
                ops.append(who | (KIND_SLASH << 8) | SLASH_NO_VOTE)
                amounts.append(s * lam // BPS)
            elif outcome == OUTCOME_VOID:
                pass
            elif v_cand[j] != cand:
                ops.append(who | (KIND_SLASH << 8) | SLASH_WRONG_CANDIDATE)
                amounts.append(s * lam // BPS)
            elif v_approve[j] == (outcome == OUTCOME_ACCEPTED):
                amt: uint256 = v_pot * s // win
                if amt > 0:
                    ops.append(who | (KIND_REWARD << 8) | ROLE_VOTER)
                    amounts.append(amt)
            else:
                ops.append(who | (KIND_SLASH << 8) | SLASH_WRONG_VOTE)
                amounts.append(s * lam // BPS)
        tally: int256 = convert(yes, int256) - convert(no, int256)
        return ([cand, g], [outcome, yes, no, acc_bits, inv_bits, dup_bits, n_valid], tally, ops, amounts, tallies)

    # per-proposal mode: each valid proposal has its own tally and an equal share
    share: uint256 = 0
    if n_valid > 0:
        share = reward // n_valid
    pp_pot: uint256 = share * rho // BPS
    earn: DynArray[uint256, MAX_VOTERS] = []
    wrong: DynArray[uint256, MAX_VOTERS] = []
    for j: uint256 in range(n_v, bound=MAX_VOTERS):
        earn.append(0)
        wrong.append(0)
    rej_bits: uint256 = 0
    for i: uint256 in range(n_p, bound=MAX_PROPOSERS):
        s: uint256 = p_stake[i]
        if p_state[i] == 0:
            tallies.append(0)
            ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_NO_PROPOSAL)
            amounts.append(s * lam // BPS)
            continue
        if p_state[i] == 1:
            tallies.append(0)
            ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_NO_REVEAL)
            amounts.append(s * lam // BPS)
            continue
        if dup_bits & (1 << i) != 0:
            tallies.append(0)
            ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_DUPLICATE)
            amounts.append(s * lam // BPS)
            continue
        if inv_bits & (1 << i) != 0:
            tallies.append(0)
            ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_INVALID)
            amounts.append(s * lam // BPS)
            continue
        y: uint256 = 0
        nn: uint256 = 0
        for j: uint256 in range(n_v, bound=MAX_VOTERS):
            if v_state[j] == REVEALED:
                if (v_bits[j] >> i) & 1 == 1:
                    y += v_stake[j]
                else:
                    nn += v_stake[j]
        tallies.append(convert(y, int256) - convert(nn, int256))
        ok: bool = y * 2 > committee
        bad: bool = nn * 2 > committee
        if not ok and not bad:
            continue
        pot: uint256 = share - pp_pot
        win: uint256 = y
        if ok:
            acc_bits |= 1 << i
            g = keccak256(concat(g, p_hash[i]))
            if pp_pot > 0:
                ops.append((i << 16) | (KIND_REWARD << 8) | ROLE_PROPOSER)
                amounts.append(pp_pot)
        else:
            rej_bits |= 1 << i
            pot = share
            win = nn
            ops.append((i << 16) | (KIND_SLASH << 8) | SLASH_REJECTED_PROPOSAL)
            amounts.append(s * lam // BPS)
        for j: uint256 in range(n_v, bound=MAX_VOTERS):
            if v_state[j] == REVEALED:
                if ((v_bits[j] >> i) & 1 == 1) == ok:
                    earn[j] += pot * v_stake[j] // win
                else:
                    wrong[j] += 1
    for j: uint256 in range(n_v, bound=MAX_VOTERS):
        if not any_revealed:
            break
        who: uint256 = (n_p + j) << 16
        if v_state[j] != REVEALED:
            ops.append(who | (KIND_SLASH << 8) | SLASH_NO_VOTE)
            amounts.append(v_stake[j] * lam // BPS)
            continue
        if earn[j] > 0:
            ops.append(who | (KIND_REWARD << 8) | ROLE_VOTER)
            amounts.append(earn[j])
        if wrong[j] > 0:
            ops.append(who | (KIND_SLASH << 8) | SLASH_WRONG_VOTE)
            amounts.append(v_stake[j] * lam * wrong[j] // (BPS * n_valid))
    if acc_bits != 0:
        outcome = OUTCOME_ACCEPTED
    elif rej_bits != 0:
        outcome = OUTCOME_REJECTED
    else:
        g = global_hash
    new_g: bytes32 = global_hash
    if outcome == OUTCOME_ACCEPTED:
        new_g = g
    return ([g, new_g], [outcome, 0, 0, acc_bits, inv_bits, dup_bits, n_valid], 0, ops, amounts, tallies)
