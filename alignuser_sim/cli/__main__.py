from alignuser_sim.cli.root import main

main()
