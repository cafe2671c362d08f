// Dev-node config for tests/chain/test_jsonrpc.py: a local hardhat 2 network on
// the Prague fork, so that Vyper 0.4.3 bytecode (PUSH0, MCOPY, transient storage) runs.
module.exports = {
  networks: {
    hardhat: {
      hardfork: "prague",
      chainId: 31337,
      accounts: { count: 20 },
      mining: { auto: true },
    },
  },
};
