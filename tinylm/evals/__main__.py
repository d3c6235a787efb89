from tinylm.evals.cli import main

main()
