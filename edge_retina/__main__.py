from edge_retina.cli.main import main

main()
