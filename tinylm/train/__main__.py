from tinylm.train.cli import main

main()
